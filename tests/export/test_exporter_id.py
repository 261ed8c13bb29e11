"""The exporter digest each export records: it follows the code that shapes graphs, and only that code."""
from __future__ import annotations

import shutil
from pathlib import Path

import pipeline
from pipeline.export.exporter_id import GRAPH_PACKAGES, exporter_id, graph_code_digest


def _copy_of_pipeline(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    shutil.copytree(Path(pipeline.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_digest_follows_graph_code_only(tmp_path):
    root = _copy_of_pipeline(tmp_path)
    assert graph_code_digest(root) == exporter_id()
    (root / "cli.py").write_text((root / "cli.py").read_text() + "\n# not graph code\n")
    assert graph_code_digest(root) == exporter_id()
    for package in GRAPH_PACKAGES:
        edited = sorted((root / package).rglob("*.py"))[-1]
        before = edited.read_text()
        edited.write_text(before + "\n# another graph\n")
        assert graph_code_digest(root) != exporter_id(), package
        edited.write_text(before)
    assert graph_code_digest(root) == exporter_id()

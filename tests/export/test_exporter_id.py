"""The exporter digest each export records: it follows the code that shapes graphs, and only that code."""
from __future__ import annotations

import shutil
from pathlib import Path

import pipeline
from pipeline.export.exporter_id import GRAPH_MODULES, GRAPH_PACKAGES, exporter_id, graph_code_digest


def _copy_of_pipeline(tmp_path: Path) -> Path:
    root = tmp_path / "pipeline"
    shutil.copytree(Path(pipeline.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_digest_follows_graph_code_only(tmp_path):
    root = _copy_of_pipeline(tmp_path)
    assert graph_code_digest(root) == exporter_id()
    (root / "cli.py").write_text((root / "cli.py").read_text() + "\n# not graph code\n")
    assert graph_code_digest(root) == exporter_id()
    graph_sources = [sorted((root / package).rglob("*.py"))[-1] for package in GRAPH_PACKAGES]
    for edited in graph_sources + [root / module for module in GRAPH_MODULES]:
        before = edited.read_text()
        edited.write_text(before + "\n# another graph\n")
        assert graph_code_digest(root) != exporter_id(), edited
        edited.write_text(before)
    assert graph_code_digest(root) == exporter_id()

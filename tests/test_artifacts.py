"""Artifacts: every file of a run gets the usual permissions, and a failed write leaves the old file in place."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline.artifacts import atomic_path, write_text
from tests.conftest import make_run, tiny_config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_every_file_of_a_run_gets_the_usual_permissions(tmp_path, fmnist_root):
    """Checkpoints (written by safetensors, which replaces the file it is given), JSON and ONNX files alike."""
    from pipeline.export.run_export import export_run

    run = make_run(tmp_path / "run", tiny_config(fmnist_root))
    export_run(run, ["dense", "native"])
    expected = 0o666 & ~_umask()
    files = sorted(p for p in run.iterdir() if p.is_file())
    assert {p.name for p in files} >= {"teacher.safetensors", "student.safetensors", "config.json",
                                       "model.dense.onnx", "model.native.onnx"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == expected, f"{path.name}: {oct(stat.S_IMODE(path.stat().st_mode))}"


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.json"
    write_text(path, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left behind

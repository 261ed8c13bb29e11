"""Which of a run's files the bench exports before timing: missing ones, and ones another version wrote."""
from __future__ import annotations

import json

import onnx

from pipeline.bench import run as bench_run_module
from pipeline.export.metadata import PREFIX, is_current
from tests.conftest import tiny_config
from tests.onnx_models import write_tiny


def _older(path):
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == PREFIX + "format":
            prop.value = "1"
    onnx.save(model, str(path))
    return path


def test_is_current_reads_the_format(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)
    assert is_current(write_tiny(tmp_path, "native", cfg))
    assert not is_current(_older(write_tiny(tmp_path, "plugin", cfg)))
    assert not is_current(write_tiny(tmp_path, "capped", cfg, tagged=False))
    assert not is_current(tmp_path / "model.packed.onnx")  # missing
    packed = write_tiny(tmp_path, "packed", cfg)
    assert is_current(packed, ["fold_weights", "varlen", "bias_gemm", "batch_one"])
    assert not is_current(packed, ["fold_weights", "bias_gemm"])  # another version's passes


def _without_pass(path, name):
    """The file as an exporter without the pass `name` wrote it (its metadata format unchanged)."""
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == PREFIX + "passes":
            prop.value = json.dumps({k: v for k, v in json.loads(prop.value).items() if k != name})
    onnx.save(model, str(path))
    return path


def test_missing_and_older_files_are_exported(tmp_path, fmnist_root, monkeypatch):
    cfg = tiny_config(fmnist_root)
    write_tiny(tmp_path, "dense", cfg)
    write_tiny(tmp_path, "capped", cfg)
    _older(write_tiny(tmp_path, "native", cfg))
    _without_pass(write_tiny(tmp_path, "packed", cfg), "batch_one")  # a packed file from before its batch-one branch
    asked = []
    monkeypatch.setattr(bench_run_module, "export_run", lambda run_dir, flavors: asked.extend(flavors))
    files = bench_run_module.exported_files(tmp_path, "ort-cpu", ["native", "packed", "plugin", "capped"], show=False)
    assert asked == ["native", "packed", "plugin"]  # dense and capped are current: timed as they are
    assert files == {f: tmp_path / f"model.{f}.onnx" for f in ("dense", "native", "packed", "plugin", "capped")}

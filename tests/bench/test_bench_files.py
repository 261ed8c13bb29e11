"""Which of a run's files the bench exports before timing: missing ones, and ones another exporter wrote."""
from __future__ import annotations

import json

import onnx
import pytest

from pipeline.bench import run as bench_run_module
from pipeline.errors import TokenGateError
from pipeline.export.metadata import PREFIX, is_current, read_info
from tests.conftest import tiny_config
from tests.onnx_models import write_tiny


def _edited(path, key, edit):
    """The file with its metadata entry `key` (JSON) replaced by `edit(value)`, as another exporter would write it."""
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == PREFIX + key:
            prop.value = json.dumps(edit(json.loads(prop.value)))
    onnx.save(model, str(path))
    return path


def _older(path):
    return _edited(path, "format", lambda _: 1)


def _other_exporter(path):
    return _edited(path, "exporter", lambda _: "0" * 16)


def _config_with(path, section, key, value):
    """The file as a version whose config knows `section.key` wrote it."""
    return _edited(path, "config", lambda config: {**config, section: {**config[section], key: value}})


def test_is_current_reads_the_format_and_the_exporter(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)
    assert is_current(write_tiny(tmp_path, "native", cfg))
    assert not is_current(_older(write_tiny(tmp_path, "plugin", cfg)))
    assert not is_current(write_tiny(tmp_path, "capped", cfg, tagged=False))
    assert not is_current(tmp_path / "model.packed.onnx")  # missing
    assert not is_current(_other_exporter(write_tiny(tmp_path, "packed", cfg)))
    assert not is_current(_config_with(write_tiny(tmp_path, "dense", cfg), "gates", "future_gate", 1))


def test_a_config_this_version_cannot_read_says_re_export(tmp_path, fmnist_root):
    path = _config_with(write_tiny(tmp_path, "native", tiny_config(fmnist_root)), "gates", "future_gate", 1)
    with pytest.raises(TokenGateError) as caught:
        read_info(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "unknown config key 'gates.future_gate'" in message
    assert message.endswith(f"Fix: re-export it with this version: tokengate export {tmp_path} --flavor native")


def test_missing_and_older_files_are_exported(tmp_path, fmnist_root, monkeypatch):
    cfg = tiny_config(fmnist_root)
    write_tiny(tmp_path, "dense", cfg)
    write_tiny(tmp_path, "capped", cfg)
    _older(write_tiny(tmp_path, "native", cfg))
    _other_exporter(write_tiny(tmp_path, "packed", cfg))  # same format and passes, another exporter's graph
    asked = []
    monkeypatch.setattr(bench_run_module, "export_run", lambda run_dir, flavors: asked.extend(flavors))
    files = bench_run_module.exported_files(tmp_path, "ort-cpu", ["native", "packed", "plugin", "capped"], show=False)
    assert asked == ["native", "packed", "plugin"]  # dense and capped are current: timed as they are
    assert files == {f: tmp_path / f"model.{f}.onnx" for f in ("dense", "native", "packed", "plugin", "capped")}

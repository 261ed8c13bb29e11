"""`tokengate build` refusals, end to end through the CLI: each is one line on stderr, exit status 2, and happens
before anything is built (so these run in well under a second each)."""
from __future__ import annotations

import importlib.util

import pytest

from pipeline.build import run_build
from pipeline.cli import main
from tests.build.helpers import write_export

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13)")


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(run_build.targets, "detect_target", lambda: None)  # the same answers on GPU machines
    for flavor in ("plugin", "native", "capped", "dense"):
        write_export(tmp_path, flavor)
    return tmp_path


def refused(capsys, *argv: str) -> str:
    assert main(["build", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokengate build: error: ") and err.count("\n") == 1, err
    return err


def test_unknown_target(run_dir, capsys):
    assert "unknown GPU target 'sm99'" in refused(capsys, str(run_dir / "model.capped.onnx"), "--target", "sm99")


@needs_rtx
def test_a_target_tensorrt_rtx_cannot_build(run_dir, capsys):
    err = refused(capsys, str(run_dir / "model.capped.onnx"), "--target", "sm90", "--runtime", "tensorrt-rtx")
    assert "TensorRT-RTX cannot build for sm90 (Hopper" in err and "sm75, sm80, sm86" in err


@needs_rtx
def test_plugin_flavor_on_rtx_and_a_missing_capped_export(run_dir, capsys):
    (run_dir / "model.capped.onnx").unlink()
    err = refused(capsys, str(run_dir / "model.plugin.onnx"), "--target", "sm86", "--runtime", "tensorrt-rtx")
    assert "TensorRT-RTX has no plugin support" in err
    assert f"tokengate build {run_dir / 'model.native.onnx'} --target sm86 --runtime tensorrt-rtx" in err
    assert f"tokengate export {run_dir} --flavor capped, then" in err


@needs_rtx
def test_int8_without_qdq_nodes(run_dir, capsys):
    err = refused(capsys, str(run_dir / "model.capped.onnx"), "--target", "sm86", "--precision", "int8")
    assert "no QuantizeLinear/DequantizeLinear nodes" in err and "tokengate quantize" in err


def test_a_run_directory_instead_of_an_onnx(run_dir, capsys):
    err = refused(capsys, str(run_dir), "--target", "sm86")
    assert "is a directory" in err and "model.capped.onnx" in err


def test_an_onnx_without_tokengate_metadata(run_dir, capsys):
    import onnx

    from tests.build.helpers import tiny_model

    onnx.save(tiny_model("capped"), str(run_dir / "foreign.onnx"))
    assert "has no TokenGate metadata" in refused(capsys, str(run_dir / "foreign.onnx"), "--target", "sm86")


def test_a_bad_batch_range(run_dir, capsys):
    err = refused(capsys, str(run_dir / "model.capped.onnx"), "--target", "sm86", "--batch", "64,32,128")
    assert "1 <= MIN <= OPT <= MAX" in err


def test_tensorrt_without_a_gpu(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(run_build, "choose_runtime", lambda requested, target, current: "tensorrt")
    err = refused(capsys, str(run_dir / "model.capped.onnx"), "--target", "sm86", "--runtime", "tensorrt")
    assert "TensorRT builds an engine on the GPU it is for, and this machine has no NVIDIA GPU" in err
    assert "--runtime tensorrt-rtx" in err


def test_plugin_flavor_with_tensorrt_and_no_plugin_library(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(run_build.targets, "detect_target", lambda: "sm90")
    monkeypatch.setattr(run_build, "choose_runtime", lambda requested, target, current: "tensorrt")
    err = refused(capsys, str(run_dir / "model.plugin.onnx"), "--target", "sm90",
                  "--plugin-lib", str(run_dir / "missing.so"))
    assert "plugin library" in err and "not found" in err and "make plugins TensorRT_ROOT" in err


@pytest.mark.parametrize("flavor", ["capped", "native", "dense"])
def test_rtx_takes_every_flavor_but_plugin(tmp_path, flavor):
    from pipeline.build import rtx_builder

    rtx_builder.check("sm86", flavor, tmp_path / f"model.{flavor}.onnx")

"""`make engine`'s build stage: what it builds on which machine, and its one-line skips."""
from __future__ import annotations

import argparse

import pytest

from pipeline.build import stage
from pipeline.build.runtimes import RTX, TENSORRT
from pipeline.engine import Skip

RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def plan(target="sm86", current=None, trt=False, rtx=False, plugin_built=False):
    return stage.plan_build(target, current, trt, rtx, RTX_TARGETS, plugin_built)


def test_tensorrt_on_the_target_gpu_builds_the_plugin_flavor():
    assert plan("sm90", "sm90", trt=True, rtx=True, plugin_built=True)[:2] == (TENSORRT, "plugin")


def test_tensorrt_without_the_plugin_library_builds_native_and_says_why():
    runtime, flavor, note = plan("sm90", "sm90", trt=True)
    assert (runtime, flavor) == (TENSORRT, "native") and "make plugins" in note


def test_rtx_builds_the_capped_flavor_for_an_rtx_target_on_any_machine():
    assert plan("sm86", None, rtx=True)[:2] == (RTX, "capped")
    assert plan("sm86", "sm90", trt=True, rtx=True)[:2] == (RTX, "capped")  # TensorRT cannot cross-build


def test_skips_sm90_without_tensorrt():
    with pytest.raises(Skip, match="nothing can build sm90 here: TensorRT is not installed; TensorRT-RTX does not "
                                   "build sm90.*Fix: for sm90, install TensorRT"):
        plan("sm90", None, rtx=True)


def test_skips_with_neither_runtime_and_says_how_to_get_one():
    with pytest.raises(Skip, match="no engine builder here.*pip install tensorrt-rtx-cu13"):
        plan("sm86", None)


def test_skips_tensorrt_on_another_gpu_without_rtx():
    with pytest.raises(Skip, match="TensorRT builds only for this machine's GPU \\(sm90\\).*TensorRT-RTX is not "
                                   "installed.*pip install tensorrt-rtx-cu13"):
        plan("sm86", "sm90", trt=True)


def test_stage_skips_when_the_export_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "available", lambda name: name == RTX)
    monkeypatch.setattr(stage.targets, "detect_target", lambda: None)
    args = argparse.Namespace(run=str(tmp_path), target="auto", precision="fp16")
    with pytest.raises(Skip, match="model.capped.onnx does not exist.*tokengate export"):
        stage.stage_build(args)


def test_stage_int8_needs_a_quantized_export(tmp_path, monkeypatch):
    from tests.build.helpers import write_export

    write_export(tmp_path, "capped")
    monkeypatch.setattr(stage, "available", lambda name: name == RTX)
    monkeypatch.setattr(stage.targets, "detect_target", lambda: None)
    args = argparse.Namespace(run=str(tmp_path), target="sm86", precision="int8")
    with pytest.raises(Skip, match="int8 needs a quantized \\(Q/DQ\\) model.capped.\\*.onnx.*"
                                   "tokengate quantize .*/model.capped.onnx, "):
        stage.stage_build(args)

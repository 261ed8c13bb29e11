"""Which builder `tokengate build` picks, with what is installed faked at `runtimes.available` / the import."""
from __future__ import annotations

import importlib

import pytest

from pipeline.build import runtimes
from pipeline.build.runtimes import RTX, TENSORRT
from pipeline.errors import TokenGateError


def _installed(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(runtimes, "available", lambda name: name in names)


@pytest.mark.parametrize("alias, name", [("trt", TENSORRT), ("TensorRT", TENSORRT), ("rtx", RTX),
                                         ("tensorrt_rtx", RTX), ("tensorrt-rtx", RTX)])
def test_runtime_names(alias, name):
    assert runtimes.runtime_name(alias) == name


def test_unknown_runtime_name():
    with pytest.raises(TokenGateError, match="unknown build runtime 'onnxruntime'.*tensorrt or tensorrt-rtx"):
        runtimes.runtime_name("onnxruntime")


def test_missing_module_says_how_to_install_it(monkeypatch):
    def broken(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(TokenGateError, match="TensorRT-RTX is not importable here.*pip install tensorrt-rtx-cu13"):
        runtimes.import_runtime("tensorrt-rtx")
    with pytest.raises(TokenGateError, match="TensorRT is not importable here.*from NVIDIA"):
        runtimes.import_runtime("tensorrt")


def test_a_stub_module_is_not_taken_for_tensorrt(monkeypatch):
    monkeypatch.setattr(importlib, "import_module", lambda name: type("Stub", (), {})())
    with pytest.raises(TokenGateError, match="is a stub without TensorRT itself"):
        runtimes.import_runtime("tensorrt")


def test_tensorrt_first_when_it_can_build_the_target_here(monkeypatch):
    _installed(monkeypatch, TENSORRT, RTX)
    assert runtimes.choose_runtime(None, "sm86", current="sm86") == TENSORRT


def test_rtx_for_an_rtx_target_tensorrt_cannot_build_here(monkeypatch):
    _installed(monkeypatch, TENSORRT, RTX)
    assert runtimes.choose_runtime(None, "sm86", current=None) == RTX  # no GPU: TensorRT cannot build at all
    assert runtimes.choose_runtime(None, "sm89", current="sm90") == RTX  # cross-build for another GPU
    _installed(monkeypatch, RTX)
    assert runtimes.choose_runtime(None, "sm86", current="sm86") == RTX


def test_tensorrt_when_nothing_else_can(monkeypatch):
    _installed(monkeypatch, TENSORRT, RTX)
    assert runtimes.choose_runtime(None, "sm90", current=None) == TENSORRT  # its own check says what is missing
    _installed(monkeypatch, TENSORRT)
    assert runtimes.choose_runtime(None, "sm86", current=None) == TENSORRT


def test_only_rtx_and_a_target_it_cannot_build(monkeypatch):
    _installed(monkeypatch, RTX)
    with pytest.raises(TokenGateError, match="only TensorRT-RTX is installed here, and it cannot build for sm90.*"
                                             "install TensorRT"):
        runtimes.choose_runtime(None, "sm90", current=None)


def test_neither_installed_says_how_to_get_either_in_one_line(monkeypatch):
    _installed(monkeypatch)
    with pytest.raises(TokenGateError) as info:
        runtimes.choose_runtime(None, "sm86", current=None)
    message = str(info.value)
    assert "\n" not in message and "neither TensorRT nor TensorRT-RTX is installed" in message
    assert "pip install tensorrt-rtx-cu13" in message and "developer.nvidia.com/tensorrt" in message

"""The two engine builders, imported lazily, and which one `tokengate build` uses when none is named."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

from pipeline.errors import TokenGateError, fail

TENSORRT, RTX = "tensorrt", "tensorrt-rtx"
RUNTIMES = (TENSORRT, RTX)
_ALIASES = {"trt": TENSORRT, "tensorrt_rtx": RTX, "rtx": RTX, "trt-rtx": RTX}
MODULES = {TENSORRT: "tensorrt", RTX: "tensorrt_rtx"}
LABELS = {TENSORRT: "TensorRT", RTX: "TensorRT-RTX"}
INSTALL = {
    TENSORRT: "install TensorRT 10 or later from NVIDIA (pip install tensorrt, or developer.nvidia.com/tensorrt) on "
              "a machine with the target GPU: TensorRT builds for the GPU it runs on",
    RTX: "pip install tensorrt-rtx-cu13 (or pip install -e '.[rtx]'): it builds sm75/80/86/89/120/121 engines on any "
         "machine, without a GPU",
}
HOW_TO_GET_ONE = ("pip install tensorrt-rtx-cu13 to build RTX-family targets (sm75, sm80, sm86, sm89, sm120, sm121) "
                  "on any machine, or install TensorRT from NVIDIA (developer.nvidia.com/tensorrt) to build on the "
                  "target GPU itself (sm90 and every other target)")


def runtime_name(name: str) -> str:
    canonical = _ALIASES.get(name.lower(), name.lower())
    if canonical not in RUNTIMES:
        raise fail(f"unknown build runtime {name!r}", f"use {' or '.join(RUNTIMES)}")
    return canonical


def import_runtime(name: str) -> ModuleType:
    """The runtime's Python module, or a clear error on how to install it (PyPI's `tensorrt` stubs included)."""
    name = runtime_name(name)
    try:
        module = importlib.import_module(MODULES[name])
    except Exception as exc:  # noqa: BLE001 - stub and broken installs raise all kinds of errors on import
        raise fail(f"{LABELS[name]} is not importable here ({type(exc).__name__}: {exc})", INSTALL[name]) from None
    if not hasattr(module, "Builder") or not hasattr(module, "__version__"):
        raise fail(f"the installed {MODULES[name]} module is a stub without TensorRT itself", INSTALL[name])
    return module


def available(name: str) -> bool:
    try:
        import_runtime(name)
    except TokenGateError:
        return False
    return True


def choose_runtime(requested: Optional[str], target: str, current: Optional[str] = None) -> str:
    """The builder for `target` on this machine (`current` = its GPU, None without one).

    `requested` if importable. Otherwise TensorRT when it can build the target here (it needs that very GPU), else
    TensorRT-RTX for an RTX target (on any machine), else TensorRT if installed (its own check then says what is
    missing), else one line on how to get either.
    """
    if requested:
        name = runtime_name(requested)
        import_runtime(name)
        return name
    have_trt = available(TENSORRT)
    if have_trt and current == target:
        return TENSORRT
    if available(RTX):
        from pipeline.build.rtx_builder import rtx_targets

        if target in rtx_targets():
            return RTX
        if not have_trt:
            raise fail(f"only TensorRT-RTX is installed here, and it cannot build for {target} (it builds "
                       f"{', '.join(rtx_targets())})", f"for {target}, {INSTALL[TENSORRT]}")
    if have_trt:
        return TENSORRT
    raise fail("neither TensorRT nor TensorRT-RTX is installed", HOW_TO_GET_ONE)

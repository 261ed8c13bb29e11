"""`make engine`'s build stage: build what this machine can build, or say in one line why nothing and how to fix it.

With TensorRT and the target's GPU here: the plugin flavor (the fused TokenSelect plugin, adaptive K), or the
native flavor when the plugin library is not built. With TensorRT-RTX: the capped flavor for an RTX target, built
on the CPU (the native flavor builds there too, but its data-dependent shapes have not run on an RTX GPU yet).
`--target auto` means this machine's GPU, or sm86 (through TensorRT-RTX) without one.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from pipeline.build import targets
from pipeline.build.plugin_lib import DEFAULT_LIBRARY
from pipeline.build.runtimes import HOW_TO_GET_ONE, INSTALL, RTX, TENSORRT, available


def plan_build(target: str, current: Optional[str], have_trt: bool, have_rtx: bool,
               rtx_targets: tuple[str, ...], plugin_built: bool) -> tuple[str, str, str]:
    """(runtime, flavor, note) for this machine, or raises Skip with why and how to enable it.

    Pure: it takes what is installed and present as arguments, so tests can fake every machine.
    """
    from pipeline.engine import Skip

    reasons = []
    if have_trt:
        if current == target:
            if plugin_built:
                return TENSORRT, "plugin", ""
            return TENSORRT, "native", f"native flavor: no {DEFAULT_LIBRARY.name} yet (make plugins TensorRT_ROOT=...)"
        reasons.append(f"TensorRT builds only for this machine's GPU ({current or 'none here'})")
    else:
        reasons.append("TensorRT is not installed")
    if have_rtx:
        if target in rtx_targets:
            return RTX, "capped", "capped flavor: static shapes, nothing data-dependent for TensorRT-RTX to run"
        reasons.append(f"TensorRT-RTX does not build {target} (only {', '.join(rtx_targets)})")
    else:
        reasons.append("TensorRT-RTX is not installed")
    if have_trt or have_rtx:
        fix = f"run on a {target} GPU with TensorRT, or pick an RTX target (TARGET=sm86)"
        if not have_trt:
            fix = f"for {target}, {INSTALL[TENSORRT]}"
        elif not have_rtx and target in rtx_targets:
            fix = f"{INSTALL[RTX]}, or run on a {target} GPU"
        raise Skip(f"nothing can build {target} here: {'; '.join(reasons)}. Fix: {fix}")
    raise Skip(f"no engine builder here: {'; '.join(reasons)}. Fix: {HOW_TO_GET_ONE}")


def stage_build(args: argparse.Namespace) -> str:
    """Build `args.run`'s engine for `args.target` ("auto" or smXX) at `args.precision`; returns the summary line."""
    from pipeline.build.rtx_builder import rtx_targets
    from pipeline.build.run_build import build_engine
    from pipeline.engine import Skip, stageless

    run = Path(args.run)
    current = targets.detect_target()
    target = targets.parse_target(args.target) if args.target != "auto" else current or targets.CPU_DEFAULT_TARGET
    runtime, flavor, note = plan_build(target, current, available(TENSORRT), available(RTX), rtx_targets(),
                                       DEFAULT_LIBRARY.is_file())
    if not (run / f"model.{flavor}.onnx").is_file() and stageless(run):
        flavor, note = "native", "native flavor: the student has no token stages, so nothing in it is data-dependent"
    onnx_path = run / f"model.{flavor}.onnx"
    if not onnx_path.is_file():
        raise Skip(f"{onnx_path} does not exist, so there is nothing to build. Fix: tokengate export {run} "
                   f"--flavor {flavor}")
    if args.precision == "int8":
        onnx_path = _quantized(run, flavor)
    result = build_engine(onnx_path, target=target, precision=args.precision, runtime=runtime)
    return result.summary() + (f" ({note})" if note else "")


def _quantized(run: Path, flavor: str) -> Path:
    """The run's quantized ONNX of `flavor` (Q/DQ nodes, as `tokengate quantize` writes), whatever its suffix."""
    import onnx

    from pipeline.build.onnx_prep import count_qdq
    from pipeline.engine import Skip

    for path in sorted(run.glob(f"model.{flavor}.*.onnx")):
        if count_qdq(onnx.load(str(path), load_external_data=False)):
            return path
    raise Skip(f"int8 needs a quantized (Q/DQ) model.{flavor}.*.onnx in {run}, and there is none. Fix: tokengate "
               f"quantize {run}/model.{flavor}.onnx, or PRECISION=fp16")

"""TensorRT proper: builds on the GPU the engine is for, every flavor, with our plugin library for the plugin one.

TensorRT times kernels on the GPU it runs on, so the target must be that GPU. Networks are strongly typed (the only
kind TensorRT 11 has): precision comes from the prepared ONNX, fp16 converted and int8 from its Q/DQ nodes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipeline.build import plugin_lib, targets
from pipeline.build.network import build_serialized, make_logger, parse_onnx
from pipeline.build.plugin_lib import PluginLibrary
from pipeline.build.profile import BatchProfile
from pipeline.errors import fail

LABEL = "TensorRT"
FLAVORS = ("plugin", "native", "capped", "dense")


def check(target: str, flavor: str, source: Path, current: Optional[str]) -> None:
    """Refuse, before any work, a target that is not this machine's GPU (`current`, None without one)."""
    rtx = f", or --runtime tensorrt-rtx, which builds {target} on any machine" if target in targets.RTX_TARGETS else ""
    if current is None:
        raise fail("TensorRT builds an engine on the GPU it is for, and this machine has no NVIDIA GPU (none "
                   "visible to torch or nvidia-smi)", f"build on a machine with a {targets.describe(target)} GPU{rtx}")
    if current != target:
        raise fail(f"TensorRT builds for the GPU it runs on, {targets.describe(current)} here, not {target}",
                   f"pass --target {current}, or build on a {target} machine{rtx}")
    if flavor not in FLAVORS:
        raise fail(f"{source} has flavor {flavor!r}, which this builder does not know",
                   "re-export it with `tokengate export`")


def build(trt: Any, path: Path, source: Path, target: str, profile: BatchProfile, chw: tuple[int, ...],
          plugin: Optional[PluginLibrary], current: Optional[str], verbose: bool) -> bytes:
    """Build `path` (prepared from `source`) on this GPU; the plugin library must be registered before parsing."""
    if plugin is not None:
        plugin_lib.register(trt, plugin)
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(trt, builder, logger, path, source, LABEL)
    config = builder.create_builder_config()
    blob = build_serialized(trt, builder, network, config, logger, profile, chw, LABEL, f"{source} for {target}",
                            have_gpu=True)
    del parser
    return blob

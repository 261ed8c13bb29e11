"""TensorRT-RTX: builds on the CPU, no GPU needed, for the RTX-family targets; no plugins.

What TensorRT-RTX 1.7 accepts (measured on the default model, docs/build.md):
- capped and dense: build.
- native: builds once `onnx_prep.bound_topk` has bounded its data-dependent TopK k by the axis length (values
  unchanged). The exported graph as it is parses, then fails in the compiler: "Myelin ([tensor_allocator.cpp:526:
  do_allocation] ... dimensions have overflown" for any batch range above 1.
- plugin: no plugin support, so its TokenSelect nodes do not parse ("Plugin not found, are the plugin name,
  version, and namespace correct?"). Worse, with libtokengate_plugins.so (TensorRT 11 headers) loaded into its
  registry, the parser creates TokenSelect and then the process aborts ("terminate called without an active
  exception"): the library must never be loaded into TensorRT-RTX. Refused up front, with a pointer at the native
  and capped exports; the build never swaps the file on its own, because validate must be able to trust that the
  engine is the flavor the user named.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipeline.build import targets
from pipeline.build.network import build_serialized, make_logger, parse_onnx
from pipeline.build.plugin_lib import PluginLibrary
from pipeline.build.profile import BatchProfile
from pipeline.errors import fail

LABEL = "TensorRT-RTX"
FLAVORS = ("capped", "native", "dense")


def rtx_targets() -> tuple[str, ...]:
    """The installed TensorRT-RTX's targets (its ComputeCapability enum), else the ones 1.7 has."""
    from pipeline.build.runtimes import RTX, available, import_runtime

    if not available(RTX):
        return targets.RTX_TARGETS
    members = getattr(import_runtime(RTX).ComputeCapability, "__members__", {})
    found = tuple(name.lower() for name in members if name.startswith("SM"))
    return found or targets.RTX_TARGETS


def _instead(source: Path, target: str) -> str:
    """Which export to build with TensorRT-RTX instead of `source`, and how to get it if it is missing."""
    options = []
    for flavor, what in (("native", "the same adaptive K in standard ops"), ("capped", "a static K per stage")):
        path = source.with_name(f"model.{flavor}.onnx")
        build = f"tokengate build {path} --target {target} --runtime tensorrt-rtx"
        options.append(f"{build} ({what})" if path.is_file() else
                       f"tokengate export {source.parent} --flavor {flavor}, then {build} ({what})")
    return (f"build another flavor: {' or '.join(options)}; {source.name} itself builds with TensorRT "
            f"(--runtime tensorrt) on a {target} GPU")


def check(target: str, flavor: str, source: Path, current: Optional[str] = None) -> None:
    """Refuse, before any work, what TensorRT-RTX cannot build (any machine will do, GPU or not: `current` unused)."""
    supported = rtx_targets()
    if target not in supported:
        raise fail(f"TensorRT-RTX cannot build for {targets.describe(target)}; it builds {', '.join(supported)}",
                   f"build {target} with TensorRT on a {target} GPU (--runtime tensorrt), or pick one of those targets")
    if flavor == "plugin":
        raise fail(f"TensorRT-RTX has no plugin support, so it cannot build {source} (the plugin flavor's "
                   "TokenSelect layers are a TensorRT plugin)", _instead(source, target))
    if flavor not in FLAVORS:
        raise fail(f"{source} has flavor {flavor!r}, which TensorRT-RTX does not build", _instead(source, target))


def build(trt: Any, path: Path, source: Path, target: str, profile: BatchProfile, chw: tuple[int, ...],
          plugin: Optional[PluginLibrary], current: Optional[str], verbose: bool) -> bytes:
    """Build `path` (prepared from `source`) for `target` on this machine's CPU."""
    if plugin is not None:
        raise fail("TensorRT-RTX cannot load plugin libraries", "build the capped flavor without --plugin-lib")
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(trt, builder, logger, path, source, LABEL)
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1  # one target per engine; index 0 must exist before it is set
    config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), 0)
    blob = build_serialized(trt, builder, network, config, logger, profile, chw, LABEL, f"{source} for {target}",
                            have_gpu=current is not None)
    del parser  # the network may refer to weights the parser owns: it lives until here
    return blob

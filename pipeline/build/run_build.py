"""The whole build: an exported ONNX in, `model.<flavor>.<target>.<precision>.engine` + its engine.json out."""
from __future__ import annotations

import datetime
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import onnx

from pipeline.artifacts import atomic_path, sha256_file
from pipeline.build import rtx_builder, targets, tensorrt_builder
from pipeline.build.engine_info import PRECISIONS, EngineInfo, info_path
from pipeline.build.network import INPUT_NAME
from pipeline.build.onnx_prep import check_precision, prepared_onnx
from pipeline.build.plugin_lib import check_library
from pipeline.build.profile import DEFAULT_BATCH, parse_batch
from pipeline.build.runtimes import LABELS, RTX, TENSORRT, choose_runtime, import_runtime
from pipeline.errors import fail
from pipeline.export.metadata import ExportInfo, read_info

BACKENDS: dict[str, ModuleType] = {TENSORRT: tensorrt_builder, RTX: rtx_builder}


@dataclass(frozen=True)
class BuildResult:
    engine: Path
    info_path: Path
    info: EngineInfo

    def summary(self) -> str:
        i = self.info
        return (f"{self.engine}: {i.engine_bytes / 1e6:.1f} MB, {LABELS[i.runtime]} {i.runtime_version}, {i.target}, "
                f"{i.precision}, {i.flavor} flavor, batch {i.profile['min']}..{i.profile['max']} (opt "
                f"{i.profile['opt']}), built in {i.build_seconds:.1f} s; metadata in {self.info_path.name}")


def engine_path(onnx_path: Path, flavor: str, target: str, precision: str) -> Path:
    """The engine lives next to its ONNX: runs/NAME/model.<flavor>.<target>.<precision>.engine."""
    return onnx_path.with_name(f"model.{flavor}.{target}.{precision}.engine")


def resolve_target(target: str, current: Optional[str]) -> str:
    """`auto`: this machine's GPU (`current`), else the CPU default (sm86, which TensorRT-RTX builds anywhere)."""
    if target != "auto":
        return targets.parse_target(target)
    return current or targets.CPU_DEFAULT_TARGET


def _export_info(source: Path) -> ExportInfo:
    if source.is_dir():
        found = sorted(p.name for p in source.glob("model.*.onnx"))
        raise fail(f"{source} is a directory; build takes one exported ONNX file",
                   f"pass one of {', '.join(found)}" if found else f"export it first: tokengate export {source}")
    return read_info(source)


def build_engine(onnx_path: str | Path, target: str = "auto", precision: str = "fp16", batch: str = DEFAULT_BATCH,
                 runtime: Optional[str] = None, plugin_lib: Optional[str | Path] = None,
                 out: Optional[str | Path] = None, verbose: bool = False) -> BuildResult:
    """Check everything that can be checked cheaply, then build, then write the engine and engine.json atomically."""
    source = Path(onnx_path)
    export = _export_info(source)
    if precision not in PRECISIONS:
        raise fail(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    profile = parse_batch(batch)
    current = targets.detect_target()
    target = resolve_target(target, current)
    runtime = choose_runtime(runtime, target, current)
    backend = BACKENDS[runtime]
    backend.check(target, export.flavor, source, current)
    plugin = check_library(plugin_lib) if export.flavor == "plugin" else None
    if plugin_lib is not None and plugin is None:
        print(f"note: --plugin-lib is not used: {source.name} is the {export.flavor} flavor, without plugin layers",
              file=sys.stderr)
    check_precision(onnx.load(str(source), load_external_data=False), source, precision)
    trt = import_runtime(runtime)

    engine = Path(out) if out else engine_path(source, export.flavor, target, precision)
    started = time.time()
    with prepared_onnx(source, export.flavor, precision) as parsed:
        blob = backend.build(trt, parsed, source, target, profile, tuple(export.input_shape), plugin, current,
                             verbose)
    seconds = time.time() - started
    info = EngineInfo(
        engine=engine.name, engine_sha256=hashlib.sha256(blob).hexdigest(), engine_bytes=len(blob), runtime=runtime,
        runtime_version=str(trt.__version__), target=target, precision=precision, flavor=export.flavor,
        input_name=INPUT_NAME, input_shape=list(export.input_shape), profile=profile.to_dict(),
        plugin_lib=plugin.to_dict() if plugin else None,
        onnx={"path": str(source), "sha256": sha256_file(source)}, build_seconds=round(seconds, 2),
        built_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        built_on=current or "cpu",
    )
    # Both files or neither: a new engine never sits beside the engine.json of an older one.
    with atomic_path(engine) as tmp_engine, atomic_path(info_path(engine)) as tmp_info:
        tmp_engine.write_bytes(blob)
        tmp_info.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return BuildResult(engine, info_path(engine), info)

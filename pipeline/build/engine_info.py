"""engine.json: what an engine is, written beside it as `<engine>.json` so several engines share a run directory.

The runner reads it before it touches the engine: a plan built by another TensorRT version, or for another GPU,
fails to deserialize with an opaque message, or not at all; this file turns those cases into clear errors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.artifacts import write_json
from pipeline.build import targets
from pipeline.errors import fail

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineInfo:
    """Everything `validate`, `bench` and the runner need to know about an engine without deserializing it."""

    engine: str  # the engine's file name, next to this file
    engine_sha256: str
    engine_bytes: int
    runtime: str  # tensorrt | tensorrt-rtx
    runtime_version: str  # the builder's __version__: the runtime must be the same
    target: str  # sm86, ...
    precision: str  # fp32 | fp16 | int8
    flavor: str  # plugin | native | capped | dense
    input_name: str
    input_shape: list[int]  # [C, H, W]
    profile: dict[str, int]  # {"min", "opt", "max"} batch sizes
    plugin_lib: Optional[dict[str, Any]]  # plugin flavor: {"path", "sha256", "abi_version", "plugin"}
    onnx: dict[str, str]  # {"path", "sha256"} of the exported ONNX it was built from
    build_seconds: float
    built_at: str  # ISO 8601, UTC
    built_on: str  # "cpu" or the builder's GPU target

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}


def info_path(engine: str | Path) -> Path:
    """model.capped.sm86.fp16.engine -> model.capped.sm86.fp16.engine.json"""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_info(engine: Path, info: EngineInfo) -> Path:
    path = info_path(engine)
    write_json(path, info.to_dict())
    return path


def read_info(engine: str | Path) -> EngineInfo:
    """engine.json of `engine`, checked for format and completeness."""
    engine = Path(engine)
    path = info_path(engine)
    rebuild = "rebuild the engine with `tokengate build MODEL.onnx --target ...`, which writes both files"
    if not path.is_file():
        raise fail(f"{path} is missing, so the target, TensorRT version and profile of {engine.name} are unknown",
                   rebuild)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise fail(f"{path} is not valid JSON", rebuild) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise fail(f"{path} is not engine.json format {FORMAT_VERSION}", rebuild)
    names = {f.name for f in dataclasses.fields(EngineInfo)}
    missing = sorted(names - set(data))
    if missing:
        raise fail(f"{path} lacks {', '.join(missing)}", rebuild)
    info = EngineInfo(**{k: data[k] for k in names})
    if info.precision not in PRECISIONS or set(info.profile) != {"min", "opt", "max"}:
        raise fail(f"{path} has an invalid precision or profile", rebuild)
    return info


def check_file(engine: Path, info: EngineInfo) -> bytes:
    """The engine's bytes, refused when they are not what was built (truncated, overwritten, corrupt)."""
    if not engine.is_file():
        raise fail(f"engine {engine} does not exist", "build it with `tokengate build MODEL.onnx --target ...`")
    data = engine.read_bytes()
    if len(data) != info.engine_bytes or hashlib.sha256(data).hexdigest() != info.engine_sha256:
        raise fail(f"{engine} is corrupt or was changed after it was built: {len(data)} bytes and a different "
                   f"sha256 than the {info.engine_bytes} bytes {info_path(engine).name} records",
                   f"rebuild it: tokengate build {info.onnx['path']} --target {info.target} --precision "
                   f"{info.precision} --runtime {info.runtime}")
    return data


def check_runtime(info: EngineInfo, runtime: str, version: str, engine: Path) -> None:
    """TensorRT plans load only into the exact runtime and version that built them."""
    rebuild = (f"rebuild it with this {runtime} {version}: tokengate build {info.onnx['path']} --target "
               f"{info.target} --precision {info.precision} --runtime {runtime}")
    if info.runtime != runtime:
        raise fail(f"{engine.name} was built by {info.runtime}, not {runtime}", rebuild)
    if info.runtime_version != version:
        raise fail(f"{engine.name} was built by {info.runtime} {info.runtime_version}, and this is {version}; "
                   "TensorRT engines load only into the version that built them",
                   f"{rebuild}, or install {info.runtime} {info.runtime_version}")


def check_target(info: EngineInfo, current: Optional[str], engine: Path) -> None:
    """An engine runs only on GPUs of the compute capability it was built for."""
    if current is None:
        raise fail(f"{engine.name} needs an NVIDIA GPU ({targets.describe(info.target)}), and none is visible here",
                   "run it on a machine with that GPU; on the CPU validate the ONNX with ONNX Runtime instead")
    if current != info.target:
        raise fail(f"{engine.name} was built for {targets.describe(info.target)}, and this GPU is "
                   f"{targets.describe(current)}",
                   f"rebuild it for this GPU: tokengate build {info.onnx['path']} --target {current} --precision "
                   f"{info.precision}")

"""What an exported file records about itself (ONNX metadata_props), so later stages never re-ask for it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import onnx

from pipeline.config import Config, config_from_dict
from pipeline.errors import TokenGateError, fail
from pipeline.export.exporter_id import exporter_id

PREFIX = "tokengate."
FORMAT_VERSION = 3  # 2: the selection regions; 3: the baseline record (and the merge stage's stages and sizes)


@dataclass(frozen=True)
class ExportInfo:
    """The facts `validate`, `build` and `bench` read back from an exported model."""

    flavor: str  # plugin | native | capped | packed | dense
    model: str  # student | teacher
    config: dict  # the run's Config as a dict
    stages: list[int]
    thresholds: list[float]
    min_keep: int
    num_prefix: int
    caps: Optional[list[int]]  # capped flavor: patch tokens kept at most per stage
    truncation_rate: Optional[float]  # capped flavor: share of validation images that hit a cap at some stage
    input_shape: list[int]  # [C, H, W]
    opset: int
    run_dir: str
    passes: dict[str, int] = field(default_factory=dict)  # graph pass -> nodes it rewrote (pipeline.export.onnx_export)
    # "scores" and "select": names of the nodes that score and select tokens (pipeline.export.selection), read by
    # quantization (kept in fp32) and the bench's selection share; empty for dense
    selection: dict[str, list[str]] = field(default_factory=dict)
    # A baseline written beside the run's flavors to be timed against them (`calib.tome_export`): its method, its
    # settings and its MACs per image (it has no kept-token output to count them from); None for our flavors
    baseline: Optional[dict] = None
    # The exporter that wrote the file (pipeline.export.exporter_id): the bench re-exports a file another one wrote
    exporter: str = ""

    def run_config(self) -> Config:
        return config_from_dict(self.config)

    @staticmethod
    def of(model, cfg: Config, flavor: str, run_dir: str | Path, opset: int, caps: Optional[list[int]] = None,
           truncation_rate: Optional[float] = None) -> "ExportInfo":
        """What an export of `model` (a GatedViT) from the run `run_dir` records."""
        return ExportInfo(
            flavor=flavor, model="teacher" if flavor == "dense" else "student", config=cfg.to_dict(),
            stages=list(model.stages), thresholds=[float(t) for t in model.thresholds.detach()],
            min_keep=model.min_keep, num_prefix=model.num_prefix, caps=None if caps is None else list(caps),
            truncation_rate=truncation_rate, input_shape=[cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size],
            opset=opset, run_dir=str(run_dir))


def attach(proto: onnx.ModelProto, info: ExportInfo) -> None:
    """Store every field as one metadata_props entry (JSON values), plus the format version."""
    entries = {"format": FORMAT_VERSION, **asdict(info)}
    del proto.metadata_props[:]
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = PREFIX + key, json.dumps(value)


def load_export(path: str | Path, load_external_data: bool = False) -> onnx.ModelProto:
    """The ONNX model at `path`, or one line saying why there is none (no file, a directory, not ONNX)."""
    path = Path(path)
    if path.is_dir():
        raise fail(f"{path} is a directory, where an exported ONNX file was expected",
                   f"pass one of its files, e.g. {path / 'model.native.onnx'}")
    if not path.is_file():
        raise fail(f"{path} does not exist", "export it first: tokengate export RUN --flavor ...")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # onnx raises DecodeError and others for non-ONNX bytes
        raise fail(f"{path} is not a readable ONNX file ({type(exc).__name__})",
                   "pass a file written by `tokengate export`") from None


def read_info(path: str | Path, proto: Optional[onnx.ModelProto] = None) -> ExportInfo:
    """Read ExportInfo back; a file without it is not one of ours, and says so."""
    path = Path(path)
    if proto is None:
        proto = load_export(path)
    props = {p.key[len(PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}
    if "format" not in props:
        raise fail(f"{path} has no TokenGate metadata, so its thresholds, config and flavor are unknown",
                   "export the model with `tokengate export RUN`; other ONNX files cannot be validated here")
    if int(json.loads(props["format"])) != FORMAT_VERSION:
        raise fail(f"{path} uses TokenGate metadata version {props['format']}", "re-export it with this version")
    fields = {k: json.loads(v) for k, v in props.items() if k != "format"}
    try:
        info = ExportInfo(**fields)
    except TypeError as exc:
        raise fail(f"{path} has incomplete TokenGate metadata ({exc})", "re-export it with `tokengate export`") from None
    try:
        info.run_config()
    except TokenGateError as exc:
        raise fail(f"{path} records a run config this version cannot read: {exc.problem}",
                   f"re-export it with this version: tokengate export {info.run_dir} --flavor {info.flavor}") from None
    return info


def is_current(path: str | Path) -> bool:
    """Whether `path` is a readable export that this exporter wrote (pipeline.export.exporter_id): what the bench
    times as it is, and re-exports when not."""
    try:
        info = read_info(path)
    except TokenGateError:
        return False
    return info.exporter == exporter_id()

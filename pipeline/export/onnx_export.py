"""Export a GatedViT to ONNX with torch's dynamo exporter, one flavor at a time.

plugin: one fused `tokengate::TokenSelect` node per stage, data-dependent K.
native: the same semantics in standard ONNX ops, data-dependent K (runs in ONNX Runtime).
capped: standard ops with a constant K per stage (TopK with constant k): builds everywhere, TensorRT-RTX included.
dense: the teacher, no token selection, for speed comparisons.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import onnx
import torch
from torch import nn

from pipeline.artifacts import atomic_path
from pipeline.errors import fail
from pipeline.export import schema
from pipeline.export.fold_weights import fold_weight_views
from pipeline.export.metadata import ExportInfo, attach
from pipeline.models import GatedViT

FLAVORS = ("plugin", "native", "capped", "dense")
TENSORRT_FLAVORS = ("plugin", "capped")  # built by TensorRT / TensorRT-RTX: scores keep a separate class-token pass
MIN_OPSET = 18  # torch's dynamo exporter emits opset 18+; TokenSelect's neighbours (TopK, Where, ...) need nothing newer
TWO_GB = 2 * 1024**3
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "kept_tokens")


class _Exported(nn.Module):
    """What the ONNX graph computes: logits and, for gated models, tokens kept per stage."""

    def __init__(self, model: GatedViT):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        logits, lengths = self.model.forward_dropped(images)
        return (logits, lengths) if self.model.stages else logits


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise fail(f"opset {opset} is below {MIN_OPSET}, the lowest the exporter writes TokenSelect's graph in",
                   f"pass --opset {MIN_OPSET} or higher (default 20)")


def export_onnx(model: GatedViT, flavor: str, path: str | Path, info: ExportInfo, opset: int = 20,
                caps: Optional[Sequence[int]] = None,
                passes: Sequence[Callable[[onnx.ModelProto], object]] = ()) -> Path:
    """Write one flavor to `path` atomically; returns the path. `passes` rewrite the graph in place before it is
    saved (the bench's `bias_gemm`)."""
    if flavor not in FLAVORS:
        raise fail(f"unknown flavor {flavor!r}", f"use one of {', '.join(FLAVORS)}")
    check_opset(opset)
    if model.group_gates is not None:
        raise fail("group-level dynamic gates decide per batch, which no static graph can express",
                   "export a run trained with gates.dynamic=none")
    model = copy.deepcopy(model).eval()
    if flavor != "dense":
        model.set_select({"plugin": "op", "native": "native", "capped": "capped"}[flavor], caps)
        model.share_score_attention(flavor not in TENSORRT_FLAVORS)
    schema.register_schema()
    images = torch.randn(2, *info.input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    outputs = list(OUTPUT_NAMES if model.stages else OUTPUT_NAMES[:1])
    with _quiet():
        program = torch.onnx.export(
            _Exported(model).eval(), (images,), input_names=[INPUT_NAME], output_names=outputs,
            dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True, optimize=True,
            custom_translation_table={torch.ops.tokengate.token_select.default: schema.token_select_onnx},
        )
    proto = program.model_proto
    fold_weight_views(proto)
    for rewrite in passes:
        rewrite(proto)
    attach(proto, info)
    path = Path(path)
    with atomic_path(path) as tmp:
        large = proto.ByteSize() > TWO_GB
        onnx.save_model(proto, str(tmp), save_as_external_data=large,
                        location=path.name + ".data" if large else None)
        onnx.checker.check_model(str(tmp), full_check=False)
    return path


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints a progress line per step; keep the terminal for our own report."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def capped_limits(lengths: torch.Tensor, num_prefix: int, quantile: float) -> tuple[list[int], float]:
    """K per stage (patch tokens) from kept counts [N, S] on calibration data, and the share of images above a cap."""
    patches = (lengths - num_prefix).double()
    caps = [int(math.ceil(torch.quantile(patches[:, s], quantile).item())) for s in range(patches.shape[1])]
    over = (patches > torch.tensor(caps, dtype=torch.float64)).any(dim=1)
    return caps, float(over.double().mean())

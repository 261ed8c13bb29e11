"""Export a GatedViT to ONNX with torch's dynamo exporter: one function and one set of graph passes for every flavor.

plugin: one fused `tokengate::TokenSelect` node per stage, data-dependent K (TensorRT with our plugin).
native: the same semantics in standard ONNX ops, data-dependent K (any ONNX runtime).
capped: standard ops with a constant K per stage (TopK with constant k): static shapes, TensorRT-RTX included.
packed: standard ops; after the first stage every sample's kept tokens are rows of one [sum K, C] matrix, so each
    sample's cost follows its own token count (ONNX Runtime CPU's fastest graph; pipeline.models.packed). A batch of
    one image runs a second graph in the same file, without the packing (pipeline.export.batch_one).
dense: the teacher, no token selection: the speed baseline.

Passes, in order, each recorded in the file's metadata (`passes`): `fold_weights` (weight views into initializers),
`varlen` (packed only: per-sample attention placeholders into standard ops), `bias_gemm` (a linear layer's bias into
a 2-D Gemm, which ONNX Runtime CPU fuses), and for packed `batch_one` (the batch-1 graph joined under an If; the
other counts then add up both graphs'). The token scoring and selection nodes of the final graph are recorded too
(`selection`, pipeline.export.selection; a packed file records both branches').
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import onnx
import torch
from torch import nn

from pipeline.artifacts import save_onnx
from pipeline.errors import fail
from pipeline.export import attention, schema, varlen
from pipeline.export.batch_one import join_on_batch_one, join_selection
from pipeline.export.bias_gemm import fuse_bias_into_gemm
from pipeline.export.exporter_id import exporter_id
from pipeline.export.fold_weights import fold_weight_views
from pipeline.export.graph import subgraphs
from pipeline.export.metadata import ExportInfo, attach
from pipeline.export.selection import selection_regions
from pipeline.flavors import FLAVORS, TENSORRT_FLAVORS
from pipeline.models import GatedViT
from pipeline.models.packed import PackedForward, per_sample_attention_pays

MIN_OPSET = 18  # torch's dynamo exporter emits opset 18+; TokenSelect's neighbours (TopK, Where, ...) need nothing newer
TWO_GB = 2 * 1024**3
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "kept_tokens")
STACK_TRACE = "pkg.torch.onnx.stack_trace"  # per-node metadata that trace_to_onnx drops


class _Exported(nn.Module):
    """What the ONNX graph computes: logits and, for gated models, tokens kept per stage."""

    def __init__(self, model: GatedViT, forward: Callable):
        super().__init__()
        self.model, self.run = model, forward

    def forward(self, images: torch.Tensor):
        logits, lengths = self.run(images)
        return (logits, lengths) if self.model.stages else logits


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise fail(f"opset {opset} is below {MIN_OPSET}, the lowest the exporter writes TokenSelect's graph in",
                   f"pass --opset {MIN_OPSET} or higher (default 20)")


def check_exportable(model: GatedViT, flavor: str) -> None:
    """Refuse, before any work, a flavor that cannot express `model` (one line naming the fix)."""
    refusal = exportable_refusal(model, flavor)
    if refusal is not None:
        raise fail(*refusal)


def exportable_refusal(model: GatedViT, flavor: str) -> Optional[tuple[str, str]]:
    """(problem, fix) where `flavor` cannot express `model`, else None. A student without token stages is the
    sliced model alone: its native file, standard ops with nothing to select, is the one every runtime runs."""
    if flavor not in FLAVORS:
        return f"unknown flavor {flavor!r}", f"use one of {', '.join(FLAVORS)} (or 'all')"
    if model.group_gates is not None:
        return ("group-level dynamic gates decide per batch, which no static graph can express",
                "export a run trained with gates.dynamic=none")
    if flavor in ("dense", "native"):
        return None
    if not model.stages:
        return (f"the {flavor} flavor selects tokens, but this model has no token stages",
                "export its native flavor (the sliced student in standard ops, which every runtime runs): "
                "--flavor native, or train with token stages (gates.token_stages)")
    if flavor == "packed" and any(p.dtype != torch.float32 for p in model.parameters()):
        return ("the packed flavor exports float32 models (its per-sample attention is written in float32)",
                "export the float32 model; ONNX Runtime and TensorRT choose lower precision later")
    return None


def expressible_flavors(student: GatedViT) -> tuple[str, ...]:
    """The student's flavors that `export_run` writes by default, in FLAVORS order, then dense (the teacher);
    refuses a student no flavor can express."""
    students = tuple(f for f in FLAVORS if f != "dense" and exportable_refusal(student, f) is None)
    if not students:
        check_exportable(student, "native")  # the reason native, which any other student can be, is refused
    return (*students, "dense")


def export_onnx(model: GatedViT, flavor: str, path: str | Path, info: ExportInfo, opset: int = 20,
                caps: Optional[Sequence[int]] = None) -> Path:
    """Write one flavor to `path` atomically, after the graph passes (module docstring); returns the path."""
    check_exportable(model, flavor)
    check_opset(opset)
    model = copy.deepcopy(model).eval()
    forward, translations = model.forward_dropped, {}
    if flavor == "packed":
        per_sample = per_sample_attention_pays(model)
        forward = PackedForward(model, varlen=per_sample)
        varlen.register_schema()
        translations = dict(varlen.TRANSLATION)
    elif flavor != "dense":
        model = model.with_inference({"plugin": "op", "native": "native", "capped": "capped"}[flavor], caps,
                                     shared_scores=flavor not in TENSORRT_FLAVORS)
        forward = model.forward_dropped
    schema.register_schema()
    outputs = list(OUTPUT_NAMES if model.stages else OUTPUT_NAMES[:1])
    translations = {torch.ops.tokengate.token_select.default: schema.token_select_onnx, **translations}
    proto = trace_to_onnx(_Exported(model, forward).eval(), info.input_shape, outputs, opset, translations)
    passes = apply_passes(proto, varlen_expansion=flavor == "packed")
    selection = {} if flavor == "dense" else selection_regions(proto)
    if flavor == "packed":
        proto, passes, selection = _with_batch_one(model, proto, passes, selection, info, outputs, opset)
    attach(proto, replace(info, passes=passes, selection=selection, exporter=exporter_id()))
    return write_onnx(proto, path)


def _with_batch_one(model: GatedViT, general: onnx.ModelProto, passes: dict[str, int], selection: dict[str, list[str]],
                    info: ExportInfo, outputs: list[str], opset: int) -> tuple[onnx.ModelProto, dict, dict]:
    """The packed file: `general` joined with the batch-one graph (pipeline.export.batch_one); the passes of both
    graphs added up, and the selection regions of both (the batch-one graph's under its prefix)."""
    single = trace_to_onnx(_Exported(model, PackedForward(model, batch_one=True)).eval(), info.input_shape, outputs,
                           opset, batch=1)
    single_passes = apply_passes(single)
    selection = join_selection(selection, selection_regions(single))
    joined = join_on_batch_one(single, general)
    passes = {name: passes.get(name, 0) + single_passes.get(name, 0) for name in {**passes, **single_passes}}
    return joined, {**passes, "batch_one": 1}, selection


def trace_to_onnx(module: nn.Module, input_shape: Sequence[int], outputs: Sequence[str], opset: int,
                  translations: Optional[dict] = None, batch: Optional[int] = None) -> onnx.ModelProto:
    """torch.onnx's dynamo export of `module` (images [B, *input_shape] -> `outputs`) with a dynamic batch, or the
    static `batch`, attention written out in five nodes (`pipeline.export.attention`)."""
    images = torch.randn(batch or 2, *input_shape)
    dynamic = None if batch else {"images": {0: torch.export.Dim("batch", min=1, max=65536)}}
    with _quiet():
        program = torch.onnx.export(
            module, (images,), input_names=[INPUT_NAME], output_names=list(outputs),
            dynamic_shapes=dynamic, opset_version=opset, dynamo=True, optimize=True,
            custom_translation_table={**attention.TRANSLATION, **(translations or {})},
        )
    proto = program.model_proto
    _drop_stack_traces(proto.graph)
    return proto


def _drop_stack_traces(graph: onnx.GraphProto) -> None:
    """Remove the exporter's per-node Python stack traces, in place. They name the exporting checkout's absolute
    paths and line numbers, so the same graph exported from another checkout, or after an edit that moves a line,
    would have other bytes and another sha256, and they are a quarter of a small model's file. The module names
    each node came from stay (`namespace`, `pkg.torch.onnx.name_scopes`)."""
    for node in graph.node:
        kept = [prop for prop in node.metadata_props if prop.key != STACK_TRACE]
        if len(kept) < len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        for inner in subgraphs(node):
            _drop_stack_traces(inner)


def export_passes(flavor: str) -> tuple[str, ...]:
    """The graph passes an export of `flavor` runs and records (module docstring)."""
    return ("fold_weights", "varlen", "bias_gemm", "batch_one") if flavor == "packed" else ("fold_weights", "bias_gemm")


def apply_passes(proto: onnx.ModelProto, varlen_expansion: bool = False) -> dict[str, int]:
    """The graph passes every export runs, in order (module docstring); returns {pass: nodes it rewrote}."""
    passes = {"fold_weights": fold_weight_views(proto)}
    if varlen_expansion:
        passes["varlen"] = varlen.expand_varlen_attention(proto)
        if varlen.placeholders_left(proto):
            raise fail("the packed export kept a per-sample attention placeholder that the varlen pass did not "
                       "reach (inside a function or subgraph)", "report it with the model; --flavor native exports it")
    passes["bias_gemm"] = fuse_bias_into_gemm(proto)
    return passes


def write_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Save `proto` to `path` atomically (external data past 2 GB), checked before it takes the name."""
    return save_onnx(proto, path, external_data=proto.ByteSize() > TWO_GB)


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

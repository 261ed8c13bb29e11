"""The packed flavor's per-sample attention in standard ONNX ops: each sample attends over its own kept rows.

The exporter writes `tokengate::varlen_attention` (pipeline.models.varlen_op) as one placeholder node
(`tokengate.varlen::VarlenAttention`); `expand_varlen_attention` replaces each with an `If` on whether every sample
holds as many rows (always so at batch 1):
- then: the packed rows are a plain [B, L] layout, and attention runs batched with no loop;
- else: a `Loop` over the batch slices each sample's rows, attends on [H, L, d], pads its output rows to the batch's
  largest count K (a scan output needs one shape; the padding is copies, not attention work), and the packed rows
  are gathered back.
Standard ops only, so the file runs on any ONNX Runtime. The loop costs a fixed ~22 small nodes per sample and
block, so it pays only for long token sequences (`pipeline.models.packed.per_sample_attention_pays`; docs/method.md
has the measurements). Float32 only.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxscript
import torch
from onnx import TensorProto, defs, helper, numpy_helper

from pipeline.export.graph import subgraphs
from pipeline.models import varlen_op  # noqa: F401  (registers torch.ops.tokengate.varlen_attention)

DOMAIN = "tokengate.varlen"  # exists only between export and expand_varlen_attention
OP_TYPE = "VarlenAttention"


def register_schema() -> None:
    """Let onnx and the exporter know the placeholder (idempotent); it never reaches a saved file."""
    if defs.has(OP_TYPE, DOMAIN):
        return
    param, S = defs.OpSchema.FormalParameter, defs.OpSchema
    defs.register_schema(S(
        OP_TYPE, DOMAIN, 1, doc="Attention of each sample over its own packed rows (see pipeline/export/varlen.py).",
        inputs=[param("qkv", "T", "[3, H, R, d]"), param("starts", "tensor(int64)", "[B]"),
                param("lengths", "tensor(int64)", "[B]"), param("flat", "tensor(int64)", "[R]")],
        outputs=[param("out", "T", "[R, H * d]")],
        type_constraints=[("T", ["tensor(float)"], "float rows")],
        attributes=[S.Attribute("scale", S.AttrType.FLOAT, "multiplies the queries")]))


_opset = onnxscript.values.Opset(DOMAIN, 1)


def varlen_attention_onnx(qkv, starts, lengths, flat, scale: float):
    """Translation for the exporter: the placeholder node, expanded after export."""
    return _opset.VarlenAttention(qkv, starts, lengths, flat, scale=scale)


TRANSLATION = {torch.ops.tokengate.varlen_attention.default: varlen_attention_onnx}


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def _attention(n, p: str, grid: str, out: str, rank: int) -> list[onnx.NodeProto]:
    """Attention over `grid` [3, H, *rows, d] (q, k, v stacked; `rank` = 5 with a batch axis, 4 without) to `out`
    [prod(rows), H * d], rows in their order. Reads the branch's constants {p}ones [1, 1, 1], {p}zero [0] and
    {p}scale."""
    last = rank - 2  # the last axis of q, k and v, once the stacking axis is gone
    return [
        n("Split", [grid, f"{p}ones"], [f"{p}q_", f"{p}k_", f"{p}v_"], axis=0),
        n("Squeeze", [f"{p}q_", f"{p}zero"], [f"{p}q"]),
        n("Squeeze", [f"{p}k_", f"{p}zero"], [f"{p}k"]),
        n("Squeeze", [f"{p}v_", f"{p}zero"], [f"{p}v"]),
        n("Mul", [f"{p}q", f"{p}scale"], [f"{p}qs"]),
        n("Transpose", [f"{p}k"], [f"{p}kt"], perm=[*range(last - 1), last, last - 1]),
        n("MatMul", [f"{p}qs", f"{p}kt"], [f"{p}logits"]),
        n("Softmax", [f"{p}logits"], [f"{p}probs"], axis=-1),
        n("MatMul", [f"{p}probs", f"{p}v"], [f"{p}heads"]),  # [H, *rows, d]
        n("Transpose", [f"{p}heads"], [f"{p}by_row"], perm=[*range(1, last), 0, last]),  # [*rows, H, d]
        n("Flatten", [f"{p}by_row"], [out], axis=last - 1),  # [prod(rows), H * d]
    ]


def _body(prefix: str, scale: float, qkv: str, starts: str, lengths: str, width: str) -> onnx.GraphProto:
    """One sample: rows [start, start + length) of qkv -> attention -> [length, H * d] padded to [K, H * d]."""
    n = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{prefix}{outs[0]}", **kw)  # noqa: E731
    p = prefix
    nodes = [
        n("Gather", [starts, f"{p}i"], [f"{p}start"], axis=0),
        n("Gather", [lengths, f"{p}i"], [f"{p}length"], axis=0),
        n("Add", [f"{p}start", f"{p}length"], [f"{p}end"]),
        n("Unsqueeze", [f"{p}start", f"{p}zero"], [f"{p}start1"]),
        n("Unsqueeze", [f"{p}end", f"{p}zero"], [f"{p}end1"]),
        n("Slice", [qkv, f"{p}start1", f"{p}end1", f"{p}two"], [f"{p}rows"]),
        *_attention(n, p, f"{p}rows", f"{p}rows_out", rank=4),  # [3, H, L, d] -> [L, H * d]
        n("Sub", [width, f"{p}length"], [f"{p}pad"]),
        n("Unsqueeze", [f"{p}pad", f"{p}zero"], [f"{p}pad1"]),
        n("Concat", [f"{p}zeros2", f"{p}pad1", f"{p}zero"], [f"{p}pads"], axis=0),  # [0, 0, K - L, 0]
        n("Pad", [f"{p}rows_out", f"{p}pads"], [f"{p}padded"]),  # [K, H * d]
        n("Identity", [f"{p}cond"], [f"{p}cond_out"]),
    ]
    return helper.make_graph(
        nodes, f"{p}sample",
        [helper.make_tensor_value_info(f"{p}i", TensorProto.INT64, []),
         helper.make_tensor_value_info(f"{p}cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(f"{p}cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"{p}padded", TensorProto.FLOAT, ["K", "HD"])],
        [_const(f"{p}zero", [0]), _const(f"{p}two", [2]), _const(f"{p}ones", [1, 1, 1]),
         _const(f"{p}scale", scale, np.float32), _const(f"{p}zeros2", [0, 0])])


def _uniform_branch(prefix: str, scale: float, qkv: str, lengths: str) -> onnx.GraphProto:
    """Every sample holds the same number of rows L (always at batch 1): the packed rows are the plain [B, L]
    layout, so attention runs batched on [H, B, L, d] with no loop, padding or gather."""
    n = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{prefix}{outs[0]}", **kw)  # noqa: E731
    p = prefix
    nodes = [
        n("Shape", [qkv], [f"{p}three_heads"], end=2),  # [3, H]
        n("Shape", [qkv], [f"{p}dim"], start=3),  # [d]
        n("Shape", [lengths], [f"{p}batch"]),  # [B]
        n("Concat", [f"{p}three_heads", f"{p}batch", f"{p}minus_one", f"{p}dim"], [f"{p}shape"], axis=0),
        n("Reshape", [qkv, f"{p}shape"], [f"{p}grid"]),  # [3, H, B, L, d]: sample b owns rows b * L .. b * L + L
        *_attention(n, p, f"{p}grid", f"{p}rows", rank=5),  # [B * L, H * d]: the packed rows, in order
    ]
    return helper.make_graph(
        nodes, f"{p}uniform", [], [helper.make_tensor_value_info(f"{p}rows", TensorProto.FLOAT, ["R", "HD"])],
        [_const(f"{p}zero", [0]), _const(f"{p}minus_one", [-1]), _const(f"{p}ones", [1, 1, 1]),
         _const(f"{p}scale", scale, np.float32)])


def _loop_branch(prefix: str, scale: float, qkv: str, starts: str, lengths: str, flat: str) -> onnx.GraphProto:
    """Samples of different lengths: a Loop over the batch, each sample's rows padded to K = max(lengths) for the
    scan output, then the packed rows gathered back with `flat`."""
    n = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{prefix}{outs[0]}", **kw)  # noqa: E731
    p = prefix
    nodes = [
        n("ReduceMax", [lengths], [f"{p}width"], keepdims=0),
        n("Shape", [lengths], [f"{p}batch1"]),
        n("Squeeze", [f"{p}batch1", f"{p}zero"], [f"{p}batch"]),
        n("Loop", [f"{p}batch", ""], [f"{p}samples"],
          body=_body(f"{p}body/", scale, qkv, starts, lengths, f"{p}width")),  # [B, K, H * d]
        n("Flatten", [f"{p}samples"], [f"{p}padded_rows"], axis=2),  # [B * K, H * d]
        n("Gather", [f"{p}padded_rows", flat], [f"{p}rows"], axis=0),
    ]
    return helper.make_graph(
        nodes, f"{p}per_sample", [], [helper.make_tensor_value_info(f"{p}rows", TensorProto.FLOAT, ["R", "HD"])],
        [_const(f"{p}zero", [0])])


def _expansion(node: onnx.NodeProto, index: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """An If over the placeholder's two cases (names prefixed by its own name and index): samples of one length
    attend batched (`_uniform_branch`), which spares batch 1 the loop's bookkeeping, padding and gather;
    otherwise sample by sample (`_loop_branch`)."""
    qkv, starts, lengths, flat = node.input
    scale = next(a.f for a in node.attribute if a.name == "scale")
    p = f"{node.name}_{index}/"
    n = lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{p}{outs[0]}", **kw)  # noqa: E731
    nodes = [
        n("ReduceMax", [lengths], [f"{p}longest"], keepdims=0),
        n("ReduceMin", [lengths], [f"{p}shortest"], keepdims=0),
        n("Equal", [f"{p}longest", f"{p}shortest"], [f"{p}uniform"]),
        helper.make_node("If", [f"{p}uniform"], [node.output[0]], name=f"{p}attend",
                         then_branch=_uniform_branch(f"{p}uniform/", scale, qkv, lengths),
                         else_branch=_loop_branch(f"{p}loop/", scale, qkv, starts, lengths, flat)),
    ]
    return nodes, []


def placeholders_left(model: onnx.ModelProto) -> int:
    """Placeholder nodes anywhere in `model` (graph, subgraphs, functions): 0 once expanded."""
    def count(nodes) -> int:
        return sum((node.domain == DOMAIN) + sum(count(g.node) for g in subgraphs(node)) for node in nodes)
    return count(model.graph.node) + sum(count(f.node) for f in model.functions)


def expand_varlen_attention(model: onnx.ModelProto) -> int:
    """Replace every placeholder node in `model` by its If (batched or Loop, in place); returns how many."""
    graph = model.graph
    out_nodes, count = [], 0
    for node in graph.node:
        if node.domain != DOMAIN or node.op_type != OP_TYPE:
            out_nodes.append(node)
            continue
        nodes, inits = _expansion(node, count)
        out_nodes += nodes
        graph.initializer.extend(inits)
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


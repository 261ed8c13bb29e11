"""The packed flavor's per-sample attention in standard ONNX ops: each sample attends over its own kept rows.

The exporter writes `tokengate::varlen_attention` (pipeline.models.varlen_op) as one placeholder node
(`tokengate.varlen::VarlenAttention`); `expand_varlen_attention` replaces each with an `If` on whether every sample
holds as many rows (always so at batch 1, which a packed file runs in its batch-one graph instead, and whenever
the samples keep equal counts):
- then: the packed rows are a plain [B, L] layout, and attention runs batched with no loop;
- else: a `Loop` over the batch slices each sample's rows, attends on [H, L, d], pads its output rows to the batch's
  largest count K (a scan output needs one shape; the padding is copies, not attention work), and the packed rows
  are gathered back.
Each If names its output dims after itself: ONNX Runtime's memory planner takes tensors with equal dim names for
equal sizes, and the blocks' head counts differ. Standard ops only, so the file runs on any ONNX Runtime. The loop
costs a fixed ~22 small nodes per sample and block, so it pays only for long token sequences
(`pipeline.models.packed.per_sample_attention_pays`; docs/method.md has the measurements). Float32 only.
"""
from __future__ import annotations

from typing import NamedTuple

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
    index = "tensor(int64)"
    defs.register_schema(S(
        OP_TYPE, DOMAIN, 1, doc="Attention of each sample over its own packed rows (see pipeline/export/varlen.py).",
        inputs=[param("q", "T", "[H, R, d]"), param("kv", "T", "[2, H, Rk, d]"),
                param("q_starts", index, "[B]"), param("q_lengths", index, "[B]"),
                param("kv_starts", index, "[B]"), param("kv_lengths", index, "[B]"), param("flat", index, "[R]"),
                param("kv_bias", "T", "[Rk]: added to the logits of each key row",
                      param_option=S.FormalParameterOption.Optional)],
        outputs=[param("out", "T", "[R, H * d]")],
        type_constraints=[("T", ["tensor(float)"], "float rows")],
        attributes=[S.Attribute("scale", S.AttrType.FLOAT, "multiplies the queries")]))


_opset = onnxscript.values.Opset(DOMAIN, 1)


def varlen_attention_onnx(q, kv, q_starts, q_lengths, kv_starts, kv_lengths, flat, scale: float, kv_bias=None):
    """Translation for the exporter: the placeholder node, expanded after export."""
    if kv_bias is None:
        return _opset.VarlenAttention(q, kv, q_starts, q_lengths, kv_starts, kv_lengths, flat, scale=scale)
    return _opset.VarlenAttention(q, kv, q_starts, q_lengths, kv_starts, kv_lengths, flat, kv_bias, scale=scale)


TRANSLATION = {torch.ops.tokengate.varlen_attention.default: varlen_attention_onnx}


def _const(name: str, value, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype), name)


def _node_maker(prefix: str):
    """helper.make_node with every node named after its first output, under `prefix`."""
    return lambda op, ins, outs, **kw: helper.make_node(op, ins, outs, name=f"{prefix}{outs[0]}", **kw)


def _attention(n, p: str, q: str, kv: str, out: str, rank: int, bias: str = "") -> list[onnx.NodeProto]:
    """Attention of `q` [H, *rows, d] over `kv` [2, H, *kv_rows, d] (`rank` = 4 with a batch axis, 3 without) to
    `out` [prod(rows), H * d], rows in their order; `bias` (a name, or "" for none) is added to the logits and
    broadcasts over heads and queries. Reads the branch's constants {p}ones [1, 1], {p}zero [0] and {p}scale."""
    last = rank - 1
    logits = [n("MatMul", [f"{p}qs", f"{p}kt"], [f"{p}logits"])] if not bias else [
        n("MatMul", [f"{p}qs", f"{p}kt"], [f"{p}raw_logits"]), n("Add", [f"{p}raw_logits", bias], [f"{p}logits"])]
    return [
        n("Split", [kv, f"{p}ones"], [f"{p}k_", f"{p}v_"], axis=0),
        n("Squeeze", [f"{p}k_", f"{p}zero"], [f"{p}k"]),
        n("Squeeze", [f"{p}v_", f"{p}zero"], [f"{p}v"]),
        n("Mul", [q, f"{p}scale"], [f"{p}qs"]),
        n("Transpose", [f"{p}k"], [f"{p}kt"], perm=[*range(last - 1), last, last - 1]),
        *logits,
        n("Softmax", [f"{p}logits"], [f"{p}probs"], axis=-1),
        n("MatMul", [f"{p}probs", f"{p}v"], [f"{p}heads"]),  # [H, *rows, d]
        n("Transpose", [f"{p}heads"], [f"{p}by_row"], perm=[*range(1, last), 0, last]),  # [*rows, H, d]
        n("Flatten", [f"{p}by_row"], [out], axis=last - 1),  # [prod(rows), H * d]
    ]


def _slice_rows(n, p: str, name: str, tensor: str, starts: str, lengths: str, axis: str) -> list[onnx.NodeProto]:
    """Rows starts[i] .. starts[i] + lengths[i] of `tensor` along `axis` (a constant name) to {p}{name}."""
    return [
        n("Gather", [starts, f"{p}i"], [f"{p}{name}_start"], axis=0),
        n("Gather", [lengths, f"{p}i"], [f"{p}{name}_length"], axis=0),
        n("Add", [f"{p}{name}_start", f"{p}{name}_length"], [f"{p}{name}_end"]),
        n("Unsqueeze", [f"{p}{name}_start", f"{p}zero"], [f"{p}{name}_start1"]),
        n("Unsqueeze", [f"{p}{name}_end", f"{p}zero"], [f"{p}{name}_end1"]),
        n("Slice", [tensor, f"{p}{name}_start1", f"{p}{name}_end1", axis], [f"{p}{name}"]),
    ]


def _body(prefix: str, scale: float, io: "_Inputs", width: str) -> onnx.GraphProto:
    """One sample: its query and key/value rows -> attention -> [length, H * d] padded to [K, H * d]."""
    n, p = _node_maker(prefix), prefix
    nodes = [
        *_slice_rows(n, p, "q", io.q, io.q_starts, io.q_lengths, f"{p}one"),
        *_slice_rows(n, p, "kv", io.kv, io.kv_starts, io.kv_lengths, f"{p}two"),
        *(_slice_rows(n, p, "bias", io.kv_bias, io.kv_starts, io.kv_lengths, f"{p}zero") if io.kv_bias else []),
        # [H, L, d] over [2, H, Lk, d] -> [L, H * d]; the sample's key bias [Lk] broadcasts
        *_attention(n, p, f"{p}q", f"{p}kv", f"{p}rows_out", rank=3, bias=f"{p}bias" if io.kv_bias else ""),
        n("Sub", [width, f"{p}q_length"], [f"{p}pad"]),
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
         helper.make_tensor_value_info(f"{p}padded", TensorProto.FLOAT, [f"{p}K", f"{p}HD"])],
        [_const(f"{p}zero", [0]), _const(f"{p}one", [1]), _const(f"{p}two", [2]), _const(f"{p}ones", [1, 1]),
         _const(f"{p}scale", scale, np.float32), _const(f"{p}zeros2", [0, 0])])


def _uniform_branch(prefix: str, scale: float, io: "_Inputs") -> onnx.GraphProto:
    """Every sample holds the same number of query rows L and of key rows Lk (always at batch 1): the packed rows
    are plain [B, L] and [B, Lk] layouts, so attention runs batched with no loop, padding or gather."""
    n, p = _node_maker(prefix), prefix
    nodes = [
        n("Shape", [io.q], [f"{p}num_heads"], end=1),  # [H]
        n("Shape", [io.q], [f"{p}dim"], start=2),  # [d]
        n("Shape", [io.q_lengths], [f"{p}batch"]),  # [B]
        n("Concat", [f"{p}num_heads", f"{p}batch", f"{p}minus_one", f"{p}dim"], [f"{p}q_shape"], axis=0),
        n("Concat", [f"{p}two", f"{p}q_shape"], [f"{p}kv_shape"], axis=0),
        n("Reshape", [io.q, f"{p}q_shape"], [f"{p}q_grid"]),  # [H, B, L, d]: sample b owns rows b * L .. + L
        n("Reshape", [io.kv, f"{p}kv_shape"], [f"{p}kv_grid"]),  # [2, H, B, Lk, d]
    ]
    if io.kv_bias:  # [B * Lk] -> [B, 1, Lk], which broadcasts over [H, B, L, Lk]
        nodes += [n("Concat", [f"{p}batch", f"{p}one", f"{p}minus_one"], [f"{p}bias_shape"], axis=0),
                  n("Reshape", [io.kv_bias, f"{p}bias_shape"], [f"{p}bias_grid"])]
    nodes += _attention(n, p, f"{p}q_grid", f"{p}kv_grid", f"{p}rows", rank=4,  # [B * L, H * d]: the packed rows
                        bias=f"{p}bias_grid" if io.kv_bias else "")
    return helper.make_graph(
        nodes, f"{p}uniform", [], [helper.make_tensor_value_info(f"{p}rows", TensorProto.FLOAT, [f"{p}R", f"{p}HD"])],
        [_const(f"{p}zero", [0]), _const(f"{p}two", [2]), _const(f"{p}minus_one", [-1]), _const(f"{p}ones", [1, 1]),
         _const(f"{p}scale", scale, np.float32)] + ([_const(f"{p}one", [1])] if io.kv_bias else []))


def _loop_branch(prefix: str, scale: float, io: "_Inputs") -> onnx.GraphProto:
    """Samples of different lengths: a Loop over the batch, each sample's rows padded to K = max(q_lengths) for
    the scan output, then the packed rows gathered back with `flat`."""
    n, p = _node_maker(prefix), prefix
    nodes = [
        n("ReduceMax", [io.q_lengths], [f"{p}width"], keepdims=0),
        n("Shape", [io.q_lengths], [f"{p}batch1"]),
        n("Squeeze", [f"{p}batch1", f"{p}zero"], [f"{p}batch"]),
        n("Loop", [f"{p}batch", ""], [f"{p}samples"], body=_body(f"{p}body/", scale, io, f"{p}width")),  # [B, K, HD]
        n("Flatten", [f"{p}samples"], [f"{p}padded_rows"], axis=2),  # [B * K, H * d]
        n("Gather", [f"{p}padded_rows", io.flat], [f"{p}rows"], axis=0),
    ]
    rows = helper.make_tensor_value_info(f"{p}rows", TensorProto.FLOAT, [f"{p}R", f"{p}HD"])
    return helper.make_graph(
        nodes, f"{p}per_sample", [], [rows],
        [_const(f"{p}zero", [0])])


class _Inputs(NamedTuple):
    """The placeholder's inputs, by name."""

    q: str
    kv: str
    q_starts: str
    q_lengths: str
    kv_starts: str
    kv_lengths: str
    flat: str
    kv_bias: str = ""  # optional: "" when the placeholder has no key bias


def _expansion(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    """An If over the placeholder's two cases (names prefixed by its own name and index): samples of one length
    attend batched (`_uniform_branch`), which spares equal counts the loop's bookkeeping, padding and gather;
    otherwise sample by sample (`_loop_branch`)."""
    io = _Inputs(*node.input)
    scale = next(a.f for a in node.attribute if a.name == "scale")
    p = f"{node.name}_{index}/"
    n = _node_maker(p)
    checks = []
    for name in ("q", "kv"):
        lengths = getattr(io, f"{name}_lengths")
        checks += [n("ReduceMax", [lengths], [f"{p}{name}_longest"], keepdims=0),
                   n("ReduceMin", [lengths], [f"{p}{name}_shortest"], keepdims=0),
                   n("Equal", [f"{p}{name}_longest", f"{p}{name}_shortest"], [f"{p}{name}_uniform"])]
    return [
        *checks,
        n("And", [f"{p}q_uniform", f"{p}kv_uniform"], [f"{p}uniform"]),
        helper.make_node("If", [f"{p}uniform"], [node.output[0]], name=f"{p}attend",
                         then_branch=_uniform_branch(f"{p}uniform/", scale, io),
                         else_branch=_loop_branch(f"{p}loop/", scale, io)),
    ]


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
        out_nodes += _expansion(node, count)
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


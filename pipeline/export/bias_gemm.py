"""Run a linear layer on [B, N, K] activations as one Gemm with its bias, on the rows flattened to 2-D.

torch's exporter writes `nn.Linear` on a [B, N, K] tensor as MatMul + Add. ONNX Runtime's CPU provider fuses the
bias into the GEMM only for 2-D inputs, so the Add would stay a separate pass over the output, in the dense baseline
and in every block before the first token stage, while the packed flavor's rows are 2-D already. Every export runs
this pass, so all flavors are equally lean. Each rewrite is Reshape([-1, K]) -> Gemm(W, b) -> Reshape(leading dims +
[N]): the reshapes are views. Where shape inference knows every leading dimension but the first (a ViT's token
count before any selection), the second reshape takes a constant [-1, T, N]; otherwise it reads the leading dims
with Shape + Concat, two more nodes per layer, which ONNX Runtime pays at a fixed cost each.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.export.graph import node_reads

GEMM_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def fuse_bias_into_gemm(model: onnx.ModelProto) -> int:
    """Rewrite every MatMul(x, W) + Add(b) of the main graph (W a 2-D initializer, b a 1-D initializer of W's
    width, the MatMul read by that Add alone) as a Gemm on flattened rows; returns how many were rewritten."""
    graph = model.graph
    static = _static_lead_dims(model)
    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node_reads(node):
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    taken = set(weights) | {t for n in graph.node for t in n.output} | {i.name for i in graph.input}
    constants: dict[str, onnx.TensorProto] = {}
    rewritten, dropped, gone, nodes = 0, set(), set(), []
    for node in graph.node:
        if id(node) in dropped:
            continue
        bias_add = _bias_add(node, weights, readers, outputs)
        if bias_add is None:
            nodes.append(node)
            continue
        add, bias = bias_add
        depth, width = weights[node.input[1]].dims
        rows = _constant(constants, taken, f"bias_gemm/rows_{depth}", [-1, depth])
        x, p = node.input[0], f"{node.name or node.output[0]}/bias_gemm/"
        nodes += [
            helper.make_node("Reshape", [x, rows], [p + "rows"], name=p + "rows", allowzero=1),
            helper.make_node("Gemm", [p + "rows", node.input[1], bias], [p + "out"], name=p + "gemm"),
        ]
        if x in static:  # [-1, T, N]: the first dimension follows from the rows (T > 0)
            lead = static[x]
            shape = _constant(constants, taken, "bias_gemm/shape_" + "_".join(map(str, lead + [width])),
                              [-1, *lead, width])
        else:  # a leading dimension of 0 stays 0
            shape, tail = p + "shape", _constant(constants, taken, f"bias_gemm/width_{width}", [width])
            nodes += [helper.make_node("Shape", [x], [p + "lead"], name=p + "lead", end=-1),
                      helper.make_node("Concat", [p + "lead", tail], [shape], name=shape, axis=0)]
        nodes.append(helper.make_node("Reshape", [p + "out", shape], [add.output[0]], name=p + "unflatten",
                                      allowzero=1))
        gone.add(node.output[0])
        dropped.add(id(add))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants.values())
    stale = [v for v in graph.value_info if v.name in gone]  # the MatMuls' outputs no longer exist
    for info in stale:
        graph.value_info.remove(info)
    return rewritten


def _static_lead_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensors of rank 3 or more whose dimensions between the first and the last shape inference knows (all > 0):
    name -> those dimensions. Empty for a model too large to infer in memory."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (ValueError, onnx.shape_inference.InferenceError):  # > 2 GB, or a graph inference cannot follow
        return {}
    out = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        middle = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:-1]]
        if len(dims) >= 3 and all(v > 0 for v in middle):
            out[info.name] = middle
    return out


def _bias_add(node: onnx.NodeProto, weights: dict, readers: dict,
              outputs: set[str]) -> tuple[onnx.NodeProto, str] | None:
    """(the Add, its bias name) when `node` is a MatMul by a weight whose only reader adds a bias of its width."""
    if node.op_type != "MatMul" or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
        return None
    users = readers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in outputs:
        return None
    add = users[0]
    others = [name for name in add.input if name != node.output[0]]
    width = weights[node.input[1]].dims[1]
    if len(others) != 1 or others[0] not in weights or list(weights[others[0]].dims) != [width]:
        return None
    if weights[others[0]].data_type != weights[node.input[1]].data_type or \
            weights[node.input[1]].data_type not in GEMM_TYPES:
        return None
    return add, others[0]


def _constant(constants: dict, taken: set[str], name: str, value: list[int]) -> str:
    """An int64 initializer shared by the rewrites that need the same value, under a name the graph does not use."""
    if name not in constants:
        while name in taken:
            name += "_"
        constants[name] = numpy_helper.from_array(np.array(value, np.int64), name)
        taken.add(name)
    return name

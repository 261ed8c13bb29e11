"""Fold the views the exporter leaves on weights (Transpose, Slice of an initializer) into initializers.

A layer whose weight is read twice (context mode reads the K/V rows of qkv for the context tokens and the Q rows for
the kept ones) is exported as Slice and Transpose nodes over the shared parameter, which torch's exporter does not
fold. Left in place they cost a weight copy per run, and ONNX Runtime's quantizer sees no weight behind the MatMul, so
it leaves the layer in fp32. Folding writes each view as its own initializer and drops the parameter once nothing
reads it: the views of one parameter partition it, so the file does not grow.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.export.graph import node_reads

FOLDABLE = ("Transpose", "Slice")


def fold_weight_views(model: onnx.ModelProto) -> int:
    """Replace Transpose/Slice nodes whose inputs are all initializers by initializers, until none is left; returns
    how many were folded. Graph inputs and the nodes' output names are unchanged."""
    graph, folded = model.graph, 0
    while True:
        weights = {t.name: t for t in graph.initializer}
        node = next((n for n in graph.node if n.op_type in FOLDABLE and _foldable(n, weights)), None)
        if node is None:
            break
        value = _evaluate(node, {name: numpy_helper.to_array(weights[name]) for name in node.input if name})
        graph.node.remove(node)
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        folded += 1
    read = {name for n in graph.node for name in node_reads(n)} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return folded


def _foldable(node: onnx.NodeProto, weights: dict) -> bool:
    return node.domain in ("", "ai.onnx") and bool(node.input) and len(node.output) == 1 and \
        all(name in weights for name in node.input if name)


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> np.ndarray:
    data = values[node.input[0]]
    if node.op_type == "Transpose":
        perm = _int_list(node, "perm")
        return np.ascontiguousarray(np.transpose(data, perm))
    starts, ends = values[node.input[1]], values[node.input[2]]
    axes = values[node.input[3]] if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = values[node.input[4]] if len(node.input) > 4 and node.input[4] else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))  # numpy clamps out-of-range bounds as ONNX does
    return np.ascontiguousarray(data[tuple(index)])


def _int_list(node: onnx.NodeProto, name: str) -> Optional[list[int]]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return None

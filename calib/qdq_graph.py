"""What Q/DQ quantization may touch in an exported graph, and checks that it kept off the token selection.

The selection itself is not found here: the exporter records its nodes (`ExportInfo.selection`,
pipeline.export.selection) and quantization reads that list.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import onnx

from pipeline.export.graph import constant_names
from pipeline.export.metadata import ExportInfo
from pipeline.export.selection import INDEX_INPUTS, SHAPE_SOURCES
from pipeline.errors import fail


def recorded_selection(info: ExportInfo, path: str | Path) -> tuple[list[str], set[str]]:
    """(every selection node, the score nodes) as the export recorded them; a gated file without the record is
    refused rather than guessed at."""
    if info.flavor != "dense" and not any(info.selection.values()):
        raise fail(f"{path} records no selection nodes", "re-export it with this version: tokengate export RUN")
    return info.selection.get("scores", []) + info.selection.get("select", []), set(info.selection.get("scores", []))


COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})  # their outputs are fresh fp32 accumulations


def is_weight_product(node: onnx.NodeProto, constants: set[str]) -> bool:
    """A Conv, or a MatMul/Gemm whose second operand is a constant: a layer with weights (what int8 quantizes), as
    opposed to attention's products of two activations (QK^T, AV)."""
    return node.op_type == "Conv" or (node.op_type in COMPUTE_OPS and len(node.input) > 1
                                      and node.input[1] in constants)


def score_feeding(model: onnx.ModelProto, candidates: list[str], wanted: set[str]) -> list[str]:
    """The GEMMs among `candidates` whose output reaches a score node (`wanted`) before any other weight GEMM: the qkv
    projections of the layers that score tokens. Their q and k reach the scores through attention's own products
    (QK^T, softmax, whose class row the scores read), which are followed; a product with a weight is not, nor a
    shape read (Shape, Size: no values pass, and bias_gemm's Reshapes read the shapes of the next layer's input)."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for name in n.input:
            consumers[name].append(n)
    constants = constant_names(model)
    chosen = []
    by_name = {n.name: n for n in model.graph.node}
    for name in candidates:
        frontier, seen = list(by_name[name].output), set()
        while frontier:
            for c in consumers.get(frontier.pop(), ()):
                if c.name in wanted:
                    chosen.append(name)
                    frontier = []
                    break
                if c.name not in seen and not is_weight_product(c, constants) and c.op_type not in ("Shape", "Size"):
                    seen.add(c.name)
                    frontier += list(c.output)
    return chosen


def rounded_inputs(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Selection nodes of a quantized graph that compute on int8-rounded values: a value input that reaches back to a
    DequantizeLinear through value-preserving nodes (reshape, add, ...) before any GEMM/Conv. Should be none.
    Shape reads (Shape, Size) and index-like inputs carry no values and are not followed."""
    producer = {out: n for n in model.graph.node for out in n.output}

    def value_inputs(node: onnx.NodeProto) -> list[str]:
        skip = INDEX_INPUTS.get(node.op_type, frozenset())
        return [name for slot, name in enumerate(node.input) if name and slot not in skip]

    def rounded(tensor: str, seen: set[str]) -> bool:
        node = producer.get(tensor)
        if node is None or node.name in seen or node.op_type in COMPUTE_OPS or node.op_type in SHAPE_SOURCES:
            return False
        if node.op_type == "DequantizeLinear":
            return True
        seen.add(node.name)
        return any(rounded(i, seen) for i in value_inputs(node))

    wanted = set(names)
    return [n.name for n in model.graph.node if n.name in wanted and any(rounded(i, set()) for i in value_inputs(n))]

"""Facts about an exported ONNX graph that several passes read (quantization, TensorRT preparation, profiling)."""
from __future__ import annotations

import onnx


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Tensors fixed at export: initializers and the outputs of Constant nodes."""
    constants = {t.name for t in model.graph.initializer}
    return constants | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node carries as attributes (If's branches, Loop's and Scan's bodies)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else attr.graphs)]


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its inputs, and the outer-scope names its subgraphs (If, Loop, Scan) use, which a
    Loop does not list among its inputs."""
    reads = [t for t in node.input if t]
    for graph in subgraphs(node):
        defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
        for inner in graph.node:
            reads += [t for t in node_reads(inner) if t not in defined]
            defined |= set(inner.output)
    return list(dict.fromkeys(reads))

"""Find, in an exported ONNX graph, every node that computes token scores or the token selection.

Those nodes must stay in high precision: a threshold comparison on int8-rounded scores changes which tokens survive.
Names are not used (exporters rename freely); the graph's structure is:

- the *data path* is every node from which the logits (the first output) are reachable through data edges, an
  edge being a data edge unless it enters an index-like input (Gather's indices, Where's condition, TopK's k, a
  Reshape's shape, ...);
- shape arithmetic (Shape, Constant, and nodes fed only by those or by initializers) is neither;
- the *selection path* is every other live node: the class-attention row, head importance, relative scores,
  comparisons, ranking and TopK, lengths and masks; plus the data-path nodes that apply a selection (the Gathers
  that take its indices, the Wheres that take its masks) and every `tokengate` node (TokenSelect, plugin flavor).
"""
from __future__ import annotations

from collections import defaultdict

import onnx

from pipeline.contract import DOMAIN as CUSTOM_DOMAIN
from pipeline.export.graph import constant_names

# Inputs that steer a node (indices, conditions, shapes, axes, counts) rather than carry the values it computes on.
INDEX_INPUTS: dict[str, frozenset[int]] = {
    "Gather": frozenset({1}), "GatherElements": frozenset({1}), "GatherND": frozenset({1}),
    "ScatterElements": frozenset({1}), "ScatterND": frozenset({1}), "Where": frozenset({0}), "TopK": frozenset({1}),
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}),
    "Unsqueeze": frozenset({1}), "Squeeze": frozenset({1}), "Pad": frozenset({1, 3}), "Split": frozenset({1}),
    "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}), "ReduceMin": frozenset({1}), "ReduceMean": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceProd": frozenset({1}), "CumSum": frozenset({1}), "Trilu": frozenset({1}),
    "Resize": frozenset({1, 2, 3}), "ConstantOfShape": frozenset({0}), "Range": frozenset({0, 1, 2}),
    "OneHot": frozenset({0, 1}),
}
SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})


def selection_nodes(model: onnx.ModelProto, appliers: bool = True) -> list[str]:
    """Names of the nodes on the token score / selection path, in graph order; `appliers=False` leaves out the
    data-path nodes that only apply a selection (Gather rows, mask attention)."""
    graph = model.graph
    nodes = list(graph.node)
    producer = {out: n for n in nodes for out in n.output if out}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for n in nodes:
        for slot, name in enumerate(n.input):
            consumers[name].append((n, slot))
    outputs = {o.name for o in graph.output}
    constant = constant_names(model)

    # Data path: what the logits are computed from. `kept_tokens` (lengths) is an output too, but of the selection.
    data_path = _reaching(nodes, {graph.output[0].name}, consumers, data_only=True)
    live = _reaching(nodes, outputs, consumers, data_only=False)
    shape = _shape_nodes(nodes, producer, constant)
    chosen = {n.name for n in nodes if n.name in live and n.name not in data_path and n.name not in shape}
    chosen |= {n.name for n in nodes if n.domain == CUSTOM_DOMAIN}
    if not appliers:
        return [n.name for n in nodes if n.name in chosen]
    for n in nodes:  # data-path nodes that apply a selection: they take its indices or masks
        if n.name in data_path and any(
                slot in INDEX_INPUTS.get(n.op_type, ()) and producer.get(name) is not None
                and producer[name].name in chosen for slot, name in enumerate(n.input)):
            chosen.add(n.name)
    return [n.name for n in nodes if n.name in chosen]


def _reaching(nodes, outputs: set[str], consumers, data_only: bool) -> set[str]:
    """Nodes from which a graph output is reachable (through data edges only, if asked)."""
    def carries(consumer: onnx.NodeProto, slot: int) -> bool:
        return consumer.name in reached and not (data_only and slot in INDEX_INPUTS.get(consumer.op_type, ()))

    reached: set[str] = set()
    changed = True
    while changed:  # graphs are topologically sorted: one reverse sweep usually suffices
        changed = False
        for n in reversed(nodes):
            if n.name not in reached and any(
                    out in outputs or any(carries(c, slot) for c, slot in consumers.get(out, ())) for out in n.output):
                reached.add(n.name)
                changed = True
    return reached


def _shape_nodes(nodes, producer, constant: set[str]) -> set[str]:
    """Shape arithmetic: Shape/Size/Constant, and nodes whose every input is a constant or a shape result."""
    shape: set[str] = set()
    for n in nodes:  # topological order
        ins = [i for i in n.input if i]
        if n.op_type in SHAPE_SOURCES or (ins and all(i in constant or (i in producer and producer[i].name in shape)
                                                      for i in ins)):
            shape.add(n.name)
    return shape


COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})  # their outputs are fresh fp32 accumulations


def is_weight_product(node: onnx.NodeProto, constants: set[str]) -> bool:
    """A Conv, or a MatMul/Gemm whose second operand is a constant: a layer with weights (what int8 quantizes), as
    opposed to attention's products of two activations (QK^T, AV)."""
    return node.op_type == "Conv" or (node.op_type in COMPUTE_OPS and len(node.input) > 1
                                      and node.input[1] in constants)


DECISION_OPS = frozenset({"Greater", "TopK", "ArgMax"})  # threshold comparison, ranking, min_keep top-up


def score_nodes(model: onnx.ModelProto) -> set[str]:
    """The selection-path nodes that the keep decisions are computed from (scores, comparisons, ranking, TokenSelect),
    without the selection nodes that only guard attention (an exported boolean mask's IsNaN over the softmax)."""
    selection = set(selection_nodes(model, appliers=False))
    producer = {out: n for n in model.graph.node for out in n.output}
    stack = [n for n in model.graph.node
             if n.name in selection and (n.op_type in DECISION_OPS or n.domain == CUSTOM_DOMAIN)]
    found: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        stack += [producer[i] for i in node.input if i in producer and producer[i].name in selection]
    return found


def score_feeding(model: onnx.ModelProto, candidates: list[str]) -> list[str]:
    """The GEMMs among `candidates` whose output reaches a score node before any other weight GEMM: the qkv
    projections of the layers that score tokens. Their q and k reach the scores through attention's own products
    (QK^T, softmax, whose class row the scores read), which are followed; a product with a weight is not, nor a
    shape read (Shape, Size: no values pass, and bias_gemm's Reshapes read the shapes of the next layer's input)."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for name in n.input:
            consumers[name].append(n)
    constants = constant_names(model)
    wanted, chosen = score_nodes(model), []
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

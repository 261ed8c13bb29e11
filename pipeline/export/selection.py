"""Which nodes of an exported graph score tokens and which select them, found once at export and recorded in the
file's metadata (`tokengate.selection`), so quantization and profiling read one list instead of guessing.

Names are not used to find them (exporters rename freely); the graph's structure is:

- the *data path* is every node from which the logits (the first output) are reachable through data edges, an
  edge being a data edge unless it enters an index-like input (Gather's indices, Where's condition, TopK's k, a
  Reshape's shape, TokenSelect's scores and threshold, an If's condition, ...); an outer tensor that an If or Loop
  body reads is data where the body computes its outputs from it (`data_reads`);
- shape arithmetic (Shape, Constant, and nodes fed only by those or by initializers) is neither;
- the *selection path* is every other live node, plus the data-path nodes that apply a selection (`APPLIERS`: the
  Gathers and Scatters that take its indices, the Wheres that take its masks) and every `tokengate` node.

The selection path splits in two regions: `scores`, the nodes the keep decisions (threshold comparison, ranking,
TokenSelect) are computed from and that no decision feeds (class-attention row, head importance, normalisation); and
`select`, the rest (decisions, compaction, kept counts, masks and layouts).
"""
from __future__ import annotations

from collections import defaultdict

import onnx

from pipeline.contract import DOMAIN, INPUTS, OP_TYPE
from pipeline.export.graph import constant_names, node_reads

# Inputs that steer a node (indices, conditions, shapes, axes, counts) rather than carry the values it computes on.
INDEX_INPUTS: dict[str, frozenset[int]] = {
    "Gather": frozenset({1}), "GatherElements": frozenset({1}), "GatherND": frozenset({1}),
    "ScatterElements": frozenset({1}), "ScatterND": frozenset({1}), "Where": frozenset({0}), "TopK": frozenset({1}),
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}),
    "Unsqueeze": frozenset({1}), "Squeeze": frozenset({1}), "Pad": frozenset({1, 3}), "Split": frozenset({1}),
    "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}), "ReduceMin": frozenset({1}), "ReduceMean": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceProd": frozenset({1}), "CumSum": frozenset({1}), "Trilu": frozenset({1}),
    "Resize": frozenset({1, 2, 3}), "ConstantOfShape": frozenset({0}), "Range": frozenset({0, 1, 2}),
    "OneHot": frozenset({0, 1}), "If": frozenset({0}), "Loop": frozenset({0, 1}), "Compress": frozenset({1}),
    "ReduceL1": frozenset({1}), "ReduceSumSquare": frozenset({1}), "ReduceLogSum": frozenset({1}),
    "ReduceLogSumExp": frozenset({1}), "Dropout": frozenset({1, 2}),
    OP_TYPE: frozenset({INPUTS.index("scores"), INPUTS.index("threshold")}),
}
SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})
# Data-path ops that apply a selection when the selection feeds their indices or condition (a MatMul: its one-hot
# matrix, `one_hot_reads`).
APPLIERS = frozenset({"Gather", "GatherElements", "GatherND", "Where", "ScatterElements", "ScatterND", "Compress",
                      "MatMul"})
LOGICAL = frozenset({"And", "Or", "Not", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "IsNaN",
                     "IsInf"})
BLOCK_OPS = frozenset({"MatMul", "Gemm", "Einsum", "LayerNormalization"})  # a block's compute


def _steering(node: onnx.NodeProto, slot: int) -> bool:
    return slot in INDEX_INPUTS.get(node.op_type, ())


def data_reads(node: onnx.NodeProto) -> set[str]:
    """The tensors `node` computes its values from: its inputs outside the steering slots, and the outer tensors its
    subgraphs read on their way to the subgraph's outputs through data edges (a Loop's condition output excluded:
    the per-sample attention loop reads the lengths and offsets only to steer)."""
    reads = {name for slot, name in enumerate(node.input) if name and not _steering(node, slot)}
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            targets = [o.name for o in graph.output][1 if node.op_type == "Loop" else 0:]
            needed = set(targets)
            for inner in reversed(graph.node):  # topological order: one reverse sweep
                if any(out in needed for out in inner.output):
                    needed |= data_reads(inner)
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            defined |= {o for inner in graph.node for o in inner.output}
            reads |= {name for name in needed if name not in defined}
    return reads


class _Graph:
    """Producers and readers of a graph's tensors (a node reads what `node_reads` says, subgraph reads included);
    each reader is marked with whether it reads the tensor as data (`data_reads`)."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output if out}
        self.readers: dict[str, list[tuple[onnx.NodeProto, bool]]] = defaultdict(list)
        for n in self.nodes:
            data = data_reads(n) - self.one_hot_reads(n)
            for name in node_reads(n):
                self.readers[name].append((n, name in data))

    def one_hot_reads(self, node: onnx.NodeProto) -> set[str]:
        """A MatMul's inputs that are a comparison cast to numbers: a one-hot matrix, whose product moves rows (the
        merge stage sums merged tokens into their partners so), so it steers like a Gather's indices."""
        if node.op_type != "MatMul":
            return set()
        out = set()
        for name in node.input:
            cast = self.producer.get(name)
            source = None if cast is None or cast.op_type != "Cast" else self.producer.get(cast.input[0])
            if source is not None and source.op_type in LOGICAL:
                out.add(name)
        return out

    def steers(self, node: onnx.NodeProto, slot: int) -> bool:
        return _steering(node, slot) or node.input[slot] in self.one_hot_reads(node)

    def reaching(self, outputs: set[str], data_only: bool) -> set[str]:
        """Nodes from which a graph output is reachable (through data edges only, if asked)."""
        reached: set[str] = set()
        changed = True
        while changed:  # nodes are topologically sorted: one reverse sweep usually suffices
            changed = False
            for n in reversed(self.nodes):
                if n.name not in reached and any(out in outputs or any(
                        r.name in reached and (is_data or not data_only)
                        for r, is_data in self.readers.get(out, ())) for out in n.output):
                    reached.add(n.name)
                    changed = True
        return reached

    def descendants(self, tensors: list[str]) -> set[str]:
        """Names of the nodes computed from `tensors`."""
        seen: set[str] = set()
        stack = [r for t in tensors for r, _ in self.readers.get(t, ())]
        while stack:
            node = stack.pop()
            if node.name not in seen:
                seen.add(node.name)
                stack += [r for t in node.output for r, _ in self.readers.get(t, ())]
        return seen

    def shape_nodes(self, constant: set[str]) -> set[str]:
        """Shape arithmetic: Shape/Size/Constant, and nodes whose every input is a constant or a shape result."""
        shape: set[str] = set()
        for n in self.nodes:
            ins = node_reads(n)
            if n.op_type in SHAPE_SOURCES or (ins and all(
                    i in constant or (i in self.producer and self.producer[i].name in shape) for i in ins)):
                shape.add(n.name)
        return shape


def _paths(model: onnx.ModelProto) -> tuple[_Graph, set[str], list[str]]:
    """The graph, its data path, and the selection path in graph order."""
    graph = _Graph(model)
    data_path = graph.reaching({model.graph.output[0].name}, data_only=True)  # kept_tokens is the selection's
    live = graph.reaching({o.name for o in model.graph.output}, data_only=False)
    shape = graph.shape_nodes(constant_names(model))
    chosen = {n.name for n in graph.nodes if n.name in live and n.name not in data_path and n.name not in shape}
    chosen |= {n.name for n in graph.nodes if n.domain == DOMAIN}
    chosen |= {n.name for n in graph.nodes if n.name in data_path and n.op_type in APPLIERS and any(
        graph.steers(n, slot) and name in graph.producer and graph.producer[name].name in chosen  # they take the
        for slot, name in enumerate(n.input))}  # selection's indices or masks (a reshape to its counts only steers)
    return graph, data_path, [n.name for n in graph.nodes if n.name in chosen]


def selection_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes on the token score / selection path, in graph order."""
    return _paths(model)[2]


def score_inputs(model: onnx.ModelProto, graph: _Graph) -> list[str]:
    """The tensors the keep decisions compare: TokenSelect's scores, and the non-constant side of each stage's
    `scores > threshold` (the exporter folds the threshold into a constant). Comparisons of a copy of the scores
    (nan_to_num inside the min_keep ranking, the capped re-ranking) are not stages: a copy is computed from another
    candidate with no block compute in between, while the next stage's scores always have one."""
    shape = graph.shape_nodes(constant_names(model))
    constant = constant_names(model) | {o for n in graph.nodes if n.name in shape for o in n.output}
    found = []
    for n in model.graph.node:
        if n.domain == DOMAIN:
            found.append(n.input[INPUTS.index("scores")])
        elif n.op_type == "Greater" and len(n.input) == 2 and (n.input[0] in constant) != (n.input[1] in constant):
            found.append(n.input[1] if n.input[0] in constant else n.input[0])
    found = list(dict.fromkeys(found))
    copies: set[str] = set()
    for tensor in found:
        downstream = graph.descendants([tensor])
        after_block = graph.descendants([t for n in graph.nodes if n.name in downstream and n.op_type in BLOCK_OPS
                                         for t in n.output])
        before_block = downstream - after_block
        copies |= {c for c in found if c != tensor and c in graph.producer and graph.producer[c].name in before_block}
    return [t for t in found if t not in copies]


def selection_regions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """{"scores": [...], "select": [...]} in graph order: `scores` are the selection-path nodes that compute a
    decision's scores and nothing else (every output read only inside the set), `select` the rest of the path."""
    graph, data_path, selection = _paths(model)
    chosen = set(selection)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    scores: set[str] = set()
    for tensor in score_inputs(model, graph):
        if tensor not in graph.producer or graph.producer[tensor].name in data_path:
            continue
        exclusive, stack = {graph.producer[tensor].name}, [graph.producer[tensor]]
        ancestors: set[str] = set()
        while stack:  # the ancestors of the scores off the data path (the selection path and shape reads)
            node = stack.pop()
            for t in node_reads(node):
                p = graph.producer.get(t)
                if p is not None and p.name not in data_path and p.name not in ancestors:
                    ancestors.add(p.name)
                    stack.append(p)
        for name in sorted(ancestors, key=index.__getitem__, reverse=True):  # readers come after producers
            readers = [r.name for t in graph.nodes[index[name]].output for r, _ in graph.readers.get(t, ())]
            if readers and all(r in exclusive for r in readers):
                exclusive.add(name)
        scores |= exclusive
    return {"scores": [n for n in selection if n in scores], "select": [n for n in selection if n not in scores]}

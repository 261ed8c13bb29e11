"""The packed flavor's batch-1 branch: one file, with a graph for a single image beside the general one.

A packed graph gathers each block's rows into a padded per-sample view and back, and builds every stage's layout
(offsets, masks, key bias), so that samples of different lengths can share a batch. A batch of one image needs none
of that, yet ONNX Runtime CPU pays a fixed cost for every node whatever its size. So the packed export traces the
model twice, the batch-one forward (`PackedForward(batch_one=True)`, at a static batch of 1) and the general one,
and joins them under one If on the batch size:

    images -> Shape[0] == 1 -> If(then: the batch-one graph, else: the general graph) -> logits, kept_tokens

Both branches read one copy of each weight (initializers are shared by content, whatever their names), so the file
grows by the batch-one graph's nodes only. The batch-one branch's names carry the prefix `batch_one/` and the
chooser's `batch_size/`; the general branch keeps its own (only its outputs are renamed), so the selection regions
recorded for it still name its nodes (`branch_selection` splits the record).
`branch_model` cuts either branch back out as a model of its own, for tools that analyse one flat graph.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.export.graph import node_reads, subgraphs

PREFIX = "batch_one/"  # names in the batch-one branch
BATCHED = "batched/"  # the general branch's outputs (its other names are kept)
CHOOSER = "batch_size/"  # the nodes and values that choose the branch
IF_NAME = f"{CHOOSER}choose"


def _digest(tensor: onnx.TensorProto) -> str:
    """Content of an initializer, whatever its name: dtype, shape and values (the raw bytes as stored, without a
    copy, where the exporter wrote them raw; decoded otherwise)."""
    head = f"{tensor.data_type}{list(tensor.dims)}".encode()
    values = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
    return hashlib.sha256(head + values).hexdigest()


def _rename_graph(graph: onnx.GraphProto, rename, node_prefix: str = "") -> None:
    """Apply `rename` (name -> name) to every value of `graph` and its subgraphs, and put `node_prefix` before
    every node name, in place."""
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = rename(info.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.input[:] = [rename(t) for t in node.input]
        node.output[:] = [rename(t) for t in node.output]
        node.name = node_prefix + node.name
        for inner in subgraphs(node):
            _rename_graph(inner, rename, node_prefix)


def _branch(graph: onnx.GraphProto, name: str) -> onnx.GraphProto:
    """`graph` as an If branch: no inputs (it reads the outer `images` and initializers), the same outputs."""
    branch = helper.make_graph(list(graph.node), name, [], list(graph.output))
    branch.value_info.extend(graph.value_info)
    return branch


def join_on_batch_one(batch_one: onnx.ModelProto, general: onnx.ModelProto) -> onnx.ModelProto:
    """One model that runs `batch_one` on a batch of one image and `general` on any other batch (module docstring).
    Both must have the same input and outputs; their graph passes have run. Returns a new model."""
    if [i.name for i in batch_one.graph.input] != [i.name for i in general.graph.input] or \
            [o.name for o in batch_one.graph.output] != [o.name for o in general.graph.output]:
        raise ValueError("the batch-one and batched graphs must have the same input and outputs, in one order")
    if batch_one.functions or general.functions:
        raise ValueError("graphs with local functions cannot be joined (their nodes would sit outside the If)")
    general, batch_one = _copy(general), _copy(batch_one)
    shared: dict[str, str] = {}  # content digest -> the shared initializer's name
    initializers = []
    for tensor in general.graph.initializer:
        shared.setdefault(_digest(tensor), tensor.name)
        initializers.append(tensor)
    own: dict[str, str] = {}  # the batch-one graph's initializer names -> outer names
    for tensor in batch_one.graph.initializer:
        digest = _digest(tensor)
        if digest not in shared:
            shared[digest] = PREFIX + tensor.name
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = shared[digest]
            initializers.append(copy)
        own[tensor.name] = shared[digest]
    image = general.graph.input[0].name
    outputs = [o.name for o in general.graph.output]
    del batch_one.graph.initializer[:]
    del general.graph.initializer[:]
    _rename_graph(batch_one.graph, lambda t: t if t in ("", image) else own.get(t, PREFIX + t), PREFIX)
    _rename_graph(general.graph, lambda t: BATCHED + t if t in outputs else t)
    one = numpy_helper.from_array(np.array([1], np.int64), f"{CHOOSER}one")
    nodes = [
        helper.make_node("Shape", [image], [f"{CHOOSER}batch"], name=f"{CHOOSER}batch", end=1),
        helper.make_node("Equal", [f"{CHOOSER}batch", one.name], [f"{CHOOSER}is_one"], name=f"{CHOOSER}is_one"),
        helper.make_node("If", [f"{CHOOSER}is_one"], outputs, name=IF_NAME,
                         then_branch=_branch(batch_one.graph, "batch_one"),
                         else_branch=_branch(general.graph, "batched")),
    ]
    graph = helper.make_graph(nodes, general.graph.name, list(general.graph.input),
                              [_outer_output(o) for o in general.graph.output], [*initializers, one])
    opsets: dict[str, int] = {}
    for opset in [*general.opset_import, *batch_one.opset_import]:
        opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name=general.producer_name, producer_version=general.producer_version)
    model.ir_version = general.ir_version
    model.metadata_props.extend(general.metadata_props)
    return model


def is_joined(model: onnx.ModelProto) -> bool:
    """Whether `model` is a packed file with a batch-one branch."""
    return any(node.op_type == "If" and node.name == IF_NAME for node in model.graph.node)


def branch_model(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The branch of a joined model that runs batches of `batch` images, as a model of its own (same input, outputs,
    metadata and the initializers it reads). A model that is not joined comes back as it is."""
    if not is_joined(model):
        return model
    choose = next(node for node in model.graph.node if node.name == IF_NAME)
    branch = onnx.GraphProto()
    branch.CopyFrom(next(a.g for a in choose.attribute if a.name == ("then_branch" if batch == 1 else "else_branch")))
    outer = dict(zip((o.name for o in branch.output), (o.name for o in model.graph.output)))
    _rename_graph(branch, lambda t: outer.get(t, t))  # the branch's outputs take the model's output names
    out = _copy(model)
    del out.graph.node[:]
    out.graph.node.extend(branch.node)
    del out.graph.value_info[:]
    out.graph.value_info.extend(branch.value_info)
    reads = {t for node in out.graph.node for t in node_reads(node)}
    kept = [t for t in out.graph.initializer if t.name in reads]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _outer_output(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """The model's output as the If produces it: the general branch's output name without its prefix."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = info.name.removeprefix(BATCHED)
    return copy


def join_selection(general: dict[str, list[str]], batch_one: dict[str, list[str]]) -> dict[str, list[str]]:
    """The selection regions of a joined file from those of its two graphs: the batched graph's names as they are,
    then the batch-one graph's under PREFIX, as `join_on_batch_one` renames its nodes (`branch_selection` splits)."""
    return {region: names + [PREFIX + n for n in batch_one.get(region, ())] for region, names in general.items()}


def branch_selection(selection: dict[str, list[str]], batch: int) -> dict[str, list[str]]:
    """The part of a joined file's recorded selection regions that lies in the branch for `batch` (the batch-one
    graph's names carry PREFIX). Only for a joined file: in any other, no name carries it."""
    return {region: [n for n in names if n.startswith(PREFIX) == (batch == 1)] for region, names in selection.items()}

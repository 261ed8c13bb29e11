"""The ONNX that TensorRT parses, derived from an exported one in a temporary file; the exported file stays as it is.

- plugin flavor: each `tokengate::TokenSelect` node gets the plugin's third output (`<y>__k`, the int32 size tensor
  K) and `plugin_namespace`/`plugin_version` attributes. TensorRT's parser (10.6+) wants as many node outputs as
  plugin outputs and finds creators by those attributes, not by the node's domain (plugins/tokenSelect/README.md).
  It also gets `max_tokens`, the model's token count: from the second stage on, x's N is the previous stage's
  data-dependent K, and TensorRT needs K's tuning value and upper bound as constants, not derived from it.
- fp16: TensorRT 11 and TensorRT-RTX build strongly typed networks only (no fp16 builder flag), so the engine takes
  the ONNX's own types: floats become fp16 inside, while `images` and `logits` stay fp32 at the edges and TopK
  ranks in fp32 (ONNX Runtime's converter keeps it out of fp16 by default).
- native flavor: each TopK whose k is computed from data gets k = Min(k, length of its axis). ONNX requires k to be
  at most that length, so the values never change; but the builders now see an upper bound on K. Without it,
  TensorRT-RTX 1.7 parses the native flavor and then fails in its compiler ("dimensions have overflown") for any
  batch range above 1; with it, the native flavor builds (docs/build.md).
- int8: explicit quantization only; the Q/DQ nodes `tokengate quantize` writes say what runs in int8.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline.contract import DOMAIN, OP_TYPE, VERSION, is_token_select
from pipeline.errors import fail
from pipeline.export.graph import constant_names

PLUGIN_VERSION = str(VERSION)
K_SUFFIX = "__k"
MAX_TOKENS = "max_tokens"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
TWO_GB = 2 * 1024**3


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the graph's, its subgraphs' (If/Loop/Scan) and local functions'."""
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        yield from walk(sub)
    yield from walk(model.graph)
    for function in model.functions:
        yield from function.node


def token_count(model: onnx.ModelProto) -> int:
    """The model's token count N (prefix included): the largest static N among TokenSelect inputs [B, N, C].

    The first stage's N is static (patches + prefix tokens); later stages only drop tokens, so none exceeds it.
    """
    xs = {node.input[0] for node in _nodes(model) if is_token_select(node)}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # onnx raises ValueError for protos over 2 GB, InferenceError and others
        raise fail(f"cannot infer the shapes of the plugin ONNX to find its token count ({type(exc).__name__}: "
                   f"{exc})", "pass the token count yourself (prepare_onnx.py --max-tokens N)") from None
    graph = inferred.graph
    counts = [dims[1].dim_value for v in (*graph.input, *graph.value_info) if v.name in xs
              for dims in [v.type.tensor_type.shape.dim] if len(dims) == 3 and dims[1].HasField("dim_value")]
    if not counts:
        raise fail(f"no {OP_TYPE} input has a static token count, so K's bound for TensorRT is unknown",
                   "pass the model's token count yourself (prepare_onnx.py --max-tokens N)")
    return max(counts)


def add_plugin_outputs(model: onnx.ModelProto, max_tokens: int | None = None) -> int:
    """Give every TokenSelect node its size-tensor output and plugin attributes, in place; returns how many.

    `max_tokens` (default: `token_count(model)`) becomes each node's `max_tokens` attribute unless it has one.
    """
    nodes = [node for node in _nodes(model) if is_token_select(node)]
    for node in nodes:
        if len(node.output) not in (2, 3):
            raise fail(f"{OP_TYPE} node {node.name!r} has {len(node.output)} outputs, not (y, lengths)",
                       "re-export the plugin flavor with `tokengate export RUN --flavor plugin`")
    if max_tokens is None and any(MAX_TOKENS not in {a.name for a in node.attribute} for node in nodes):
        max_tokens = token_count(model)
    for node in nodes:
        if len(node.output) == 2:
            node.output.append(node.output[0] + K_SUFFIX)
        present = {a.name for a in node.attribute}
        for name, value in (("plugin_namespace", DOMAIN), ("plugin_version", PLUGIN_VERSION), (MAX_TOKENS, max_tokens)):
            if name not in present:
                node.attribute.append(helper.make_attribute(name, value))
    return len(nodes)


def bound_topk(model: onnx.ModelProto) -> int:
    """Give every data-dependent TopK k an upper bound, k = Min(k, x.shape[axis]), in place; returns how many.

    Graph-level TopK nodes only (the exporter inlines everything); a k that is an initializer is constant already.
    """
    constants = constant_names(model)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type == "TopK" and len(node.input) > 1 and node.input[1] not in constants:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            base = f"{node.name or 'topk'}__kbound{count}"
            span = {"start": axis} if axis == -1 else {"start": axis, "end": axis + 1}
            nodes += [helper.make_node("Shape", [node.input[0]], [base + "_len"], name=base + "_len", **span),
                      helper.make_node("Min", [node.input[1], base + "_len"], [base], name=base)]
            node.input[1] = base
            count += 1
        nodes.append(node)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def count_qdq(model: onnx.ModelProto) -> int:
    return sum(node.op_type in QDQ_OPS for node in _nodes(model))


def check_qdq(model: onnx.ModelProto, path: Path) -> None:
    """Refuse Q/DQ that TensorRT's parser rejects, before a long build does: asymmetric int8 and int32 biases."""
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    for node in _nodes(model):
        if node.op_type not in QDQ_OPS:
            continue
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            raise fail(f"{path}: {node.op_type} {node.name!r} has a non-zero zero point; TensorRT quantizes "
                       "symmetrically only", "quantize with symmetric activations and weights (zero point 0)")
        source = constants.get(node.input[0])
        if node.op_type == "DequantizeLinear" and source is not None and source.data_type == onnx.TensorProto.INT32:
            raise fail(f"{path}: {node.name!r} dequantizes an int32 tensor (a quantized bias); TensorRT takes only "
                       "8-bit and smaller Q/DQ inputs", "quantize without bias quantization (biases stay float)")


def check_precision(model: onnx.ModelProto, path: Path, precision: str) -> None:
    """int8 needs Q/DQ nodes (explicit quantization); a quantized ONNX built as fp16/fp32 would mislabel its engine."""
    qdq = count_qdq(model)
    if precision == "int8" and not qdq:
        raise fail(f"{path} has no QuantizeLinear/DequantizeLinear nodes, so nothing in it would run in int8 "
                   "(TensorRT 10+ quantizes explicitly, from Q/DQ nodes)",
                   f"quantize it first: tokengate quantize {path}, then build the "
                   f"{path.stem}.int8.onnx it writes")
    if precision != "int8" and qdq:
        raise fail(f"{path} is quantized ({qdq} Q/DQ nodes), so its engine would run in int8, not {precision}",
                   "build it with --precision int8, or build the unquantized export")
    if qdq:
        check_qdq(model, path)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Floats inside become fp16; graph inputs/outputs keep their types (the runner feeds and reads fp32)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise fail(f"fp16 needs ONNX Runtime's fp16 converter ({exc})",
                   "install onnxruntime (pip install -e '.[cpu]') or build with --precision fp32") from None
    from pipeline.export import schema

    schema.register_schema()  # its shape inference must know TokenSelect
    return convert_float_to_float16(model, keep_io_types=True)


def needs_rewrite(flavor: str, precision: str) -> bool:
    return flavor in ("plugin", "native") or precision == "fp16"


@contextlib.contextmanager
def prepared_onnx(src: Path, flavor: str, precision: str) -> Iterator[Path]:
    """Yield the path TensorRT should parse: `src` itself, or a rewritten copy in a temporary directory."""
    if not needs_rewrite(flavor, precision):
        yield src
        return
    model = onnx.load(str(src))  # external data too: the copy lives elsewhere and must carry its weights
    if flavor == "plugin" and add_plugin_outputs(model) == 0:
        raise fail(f"{src} is marked as the plugin flavor but has no {DOMAIN}::{OP_TYPE} node",
                   "re-export it with `tokengate export RUN --flavor plugin`")
    if flavor == "native":
        bound_topk(model)
    if precision == "fp16":
        model = to_fp16(model)
    with tempfile.TemporaryDirectory(prefix="tokengate-build-") as tmp:
        dst = Path(tmp) / src.name
        large = model.ByteSize() > TWO_GB
        onnx.save_model(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)
        yield dst

"""The ONNX the build hands TensorRT: plugin outputs for TokenSelect, fp16 with fp32 edges, and the Q/DQ checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pipeline.build.onnx_prep import add_plugin_outputs, bound_topk, check_precision, prepared_onnx
from pipeline.errors import TokenGateError
from tests.build.helpers import SIZE, quantize, tiny_model, topk_model, write_export

FP16_TOL = 2e-3  # |logit| of the tiny model is ~0.3; fp16 keeps ~3 significant digits


def _token_selects(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "TokenSelect"]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_plugin_nodes_get_the_size_tensor_output_and_plugin_attributes():
    model = tiny_model("plugin")
    assert add_plugin_outputs(model) == 1
    (node,) = _token_selects(model)
    assert list(node.output) == ["kept", "lengths", "kept__k"]
    assert _attrs(node) == {"num_prefix": 1, "min_keep": 1, "plugin_namespace": b"tokengate", "plugin_version": b"1",
                            "max_tokens": SIZE}  # the model's token count: its 28 rows
    assert add_plugin_outputs(model) == 1 and len(node.output) == 3  # idempotent


def test_plugin_nodes_in_local_functions_and_an_explicit_namespace():
    model = tiny_model("plugin")
    _token_selects(model)[0].attribute.append(helper.make_attribute("plugin_namespace", "custom"))
    inner = helper.make_node("TokenSelect", ["x", "s", "t"], ["y", "n"], domain="tokengate", num_prefix=1, min_keep=1)
    model.functions.append(helper.make_function("local", "Stage", ["x", "s", "t"], ["y", "n"], [inner],
                                                [helper.make_opsetid("tokengate", 1)]))
    assert add_plugin_outputs(model) == 2
    assert _attrs(_token_selects(model)[0])["plugin_namespace"] == b"custom"
    assert list(model.functions[0].node[0].output) == ["y", "n", "y__k"]
    assert _attrs(model.functions[0].node[0])["max_tokens"] == SIZE  # no stage exceeds the model's token count


def test_a_token_select_with_extra_outputs_is_refused():
    model = tiny_model("plugin")
    _token_selects(model)[0].output.extend(["a", "b"])
    with pytest.raises(TokenGateError, match="has 4 outputs"):
        add_plugin_outputs(model)


def test_prepared_plugin_copy_is_temporary_and_leaves_the_export_alone(tmp_path):
    source = write_export(tmp_path, "plugin")
    with prepared_onnx(source, "plugin", "fp32") as parsed:
        assert parsed != source and parsed.is_file()
        assert len(_token_selects(onnx.load(str(parsed)))[0].output) == 3
    assert not parsed.exists()
    assert len(_token_selects(onnx.load(str(source)))[0].output) == 2


def test_fp32_capped_is_parsed_as_exported(tmp_path):
    source = write_export(tmp_path, "capped")
    with prepared_onnx(source, "capped", "fp32") as parsed:
        assert parsed == source


def test_fp16_copy_keeps_fp32_edges_and_the_numbers(tmp_path):
    source = write_export(tmp_path, "dense")
    images = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    expected = ort.InferenceSession(str(source)).run(None, {"images": images})[0]
    with prepared_onnx(source, "dense", "fp16") as parsed:
        model = onnx.load(str(parsed))
        assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        weight = next(t for t in model.graph.initializer if t.name == "head.weight")
        assert weight.data_type == TensorProto.FLOAT16
        got = ort.InferenceSession(str(parsed)).run(None, {"images": images})[0]
    assert got.dtype == np.float32 and np.abs(got - expected).max() <= FP16_TOL


def test_fp16_plugin_copy_feeds_token_select_in_fp16(tmp_path):
    source = write_export(tmp_path, "plugin")
    with prepared_onnx(source, "plugin", "fp16") as parsed:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(parsed)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    (node,) = _token_selects(model)
    assert [types[name] for name in node.input] == [TensorProto.FLOAT16] * 3
    assert len(node.output) == 3


def test_int8_needs_qdq_nodes():
    with pytest.raises(TokenGateError, match="no QuantizeLinear/DequantizeLinear nodes.*tokengate quantize "
                       "runs/x/model.capped.onnx, then build the model.capped.int8.onnx"):
        check_precision(tiny_model("capped"), Path("runs/x/model.capped.onnx"), "int8")
    check_precision(quantize(tiny_model("capped")), Path("m.onnx"), "int8")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_a_quantized_model_is_not_built_as_float(precision):
    with pytest.raises(TokenGateError, match=f"is quantized \\(2 Q/DQ nodes\\).*not {precision}.*--precision int8"):
        check_precision(quantize(tiny_model("capped")), Path("m.onnx"), precision)


def test_qdq_that_tensorrt_rejects_is_refused_before_building():
    with pytest.raises(TokenGateError, match="non-zero zero point.*symmetric"):
        check_precision(quantize(tiny_model("capped"), zero_point=3), Path("m.onnx"), "int8")
    with pytest.raises(TokenGateError, match="int32 tensor.*without bias quantization"):
        check_precision(quantize(tiny_model("capped"), bias_int32=True), Path("m.onnx"), "int8")


def test_a_data_dependent_topk_k_gets_its_axis_length_as_bound_and_the_same_results():
    images = np.random.default_rng(1).standard_normal((5, 16, 8)).astype(np.float32)
    model = topk_model(constant_k=False)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": images})[0]
    assert bound_topk(model) == 1
    onnx.checker.check_model(model)
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    bound = next(n for n in model.graph.node if n.output[0] == topk.input[1])
    assert bound.op_type == "Min" and bound.input[0] == "k"
    shape = next(n for n in model.graph.node if n.output[0] == bound.input[1])
    assert shape.op_type == "Shape" and shape.input[0] == topk.input[0] and _attrs(shape) == {"start": 1, "end": 2}
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": images})[0]
    np.testing.assert_array_equal(got, expected)  # exact: the bound never changes k


def test_a_constant_topk_k_is_left_alone():
    model = topk_model(constant_k=True)
    before = model.SerializeToString()
    assert bound_topk(model) == 0 and model.SerializeToString() == before


def test_the_native_flavor_is_parsed_with_bounded_topk(tmp_path):
    source = write_export(tmp_path, "native", topk_model(constant_k=False))
    with prepared_onnx(source, "native", "fp32") as parsed:
        assert sum(n.op_type == "Min" for n in onnx.load(str(parsed)).graph.node) == 1
    assert not any(n.op_type == "Min" for n in onnx.load(str(source)).graph.node)

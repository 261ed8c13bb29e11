"""plugins/prepare_onnx.py: the plugin-flavour ONNX rewritten for TensorRT's ONNX parser (CPU, onnx only)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.errors import TokenGateError
from onnx import helper, numpy_helper

_SPEC = importlib.util.spec_from_file_location(
    "prepare_onnx", Path(__file__).resolve().parents[2] / "plugins" / "prepare_onnx.py")
prepare_onnx = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(prepare_onnx)


def _token_select_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "TokenSelect"]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_adds_size_tensor_output_and_plugin_attributes(run_dir: Path):
    src, dst = run_dir / "model.plugin.onnx", run_dir / "model.plugin.trt.onnx"
    assert prepare_onnx.prepare_file(src, dst) == 1
    (node,) = _token_select_nodes(onnx.load(str(dst)))
    assert list(node.output) == ["y", "lengths", "y__k"]
    assert _attrs(node) == {"num_prefix": 1, "min_keep": 1, "plugin_namespace": b"tokengate", "plugin_version": b"1",
                            "max_tokens": 28}  # x is the image's 28 rows
    # The canonical model keeps the two-output contract that ONNX Runtime runs.
    (original,) = _token_select_nodes(onnx.load(str(src)))
    assert list(original.output) == ["y", "lengths"]


def test_shares_external_weights_next_to_the_source(run_dir: Path):
    dst = run_dir / "model.plugin.trt.onnx"
    prepare_onnx.prepare_file(run_dir / "model.plugin.onnx", dst)
    assert not (run_dir / "model.plugin.trt.onnx.data").exists()
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer}
    np.testing.assert_array_equal(weights["stage0.threshold"], np.float32(1.0))  # exact: a copied weight


def test_writes_its_own_weights_elsewhere(run_dir: Path, tmp_path: Path):
    dst = tmp_path / "elsewhere" / "model.trt.onnx"
    dst.parent.mkdir()
    prepare_onnx.prepare_file(run_dir / "model.plugin.onnx", dst)
    (run_dir / "model.plugin.onnx.data").unlink()  # the copy must not point back at the source's weights
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(dst)).graph.initializer}
    np.testing.assert_array_equal(weights["stage0.threshold"], np.float32(1.0))  # exact: a copied weight


def test_is_idempotent(tiny_plugin_model: onnx.ModelProto):
    assert prepare_onnx.prepare_for_tensorrt(tiny_plugin_model) == 1
    assert prepare_onnx.prepare_for_tensorrt(tiny_plugin_model) == 1
    (node,) = _token_select_nodes(tiny_plugin_model)
    assert len(node.output) == 3 and sorted(_attrs(node)) == ["max_tokens", "min_keep", "num_prefix",
                                                               "plugin_namespace", "plugin_version"]


def test_keeps_an_explicit_namespace(tiny_plugin_model: onnx.ModelProto):
    (node,) = _token_select_nodes(tiny_plugin_model)
    node.attribute.append(helper.make_attribute("plugin_namespace", "custom"))
    prepare_onnx.prepare_for_tensorrt(tiny_plugin_model)
    assert _attrs(node)["plugin_namespace"] == b"custom"


def test_patches_nodes_inside_local_functions(tiny_plugin_model: onnx.ModelProto):
    inner = helper.make_node("TokenSelect", ["x", "s", "t"], ["y", "n"], domain="tokengate", num_prefix=1,
                             min_keep=1)
    tiny_plugin_model.functions.append(helper.make_function(
        "tokengate.local", "Stage", ["x", "s", "t"], ["y", "n"], [inner],
        [helper.make_opsetid("tokengate", 1)]))
    assert prepare_onnx.prepare_for_tensorrt(tiny_plugin_model) == 2
    assert list(tiny_plugin_model.functions[0].node[0].output) == ["y", "n", "y__k"]


def test_rejects_a_model_without_token_select(run_dir: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="no tokengate::TokenSelect"):
        prepare_onnx.prepare_file(run_dir / "model.dense.onnx", run_dir / "model.dense.trt.onnx")


def test_rejects_unexpected_outputs(tiny_plugin_model: onnx.ModelProto):
    _token_select_nodes(tiny_plugin_model)[0].output.append("extra1")
    _token_select_nodes(tiny_plugin_model)[0].output.append("extra2")
    with pytest.raises(TokenGateError, match="4 outputs"):
        prepare_onnx.prepare_for_tensorrt(tiny_plugin_model)


def _chain(stages: int = 3, tokens: int = 197) -> onnx.ModelProto:
    """x [B, tokens, 8] through `stages` TokenSelect nodes: from the second on, x's N is data-dependent."""
    nodes, x = [], "x"
    for i in range(stages):
        nodes += [helper.make_node("ReduceMean", [x, "axes2"], [f"all{i}"], keepdims=0),
                  helper.make_node("Slice", [f"all{i}", "one", "big", "one"], [f"scores{i}"]),
                  helper.make_node("TokenSelect", [x, f"scores{i}", "thr"], [f"y{i}", f"len{i}"], domain="tokengate",
                                   num_prefix=1, min_keep=1)]
        x = f"y{i}"
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("axes2", [2]), ("one", [1]), ("big", [1 << 30]))] + [numpy_helper.from_array(np.float32(0.0), "thr")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             ["batch", tokens, 8])],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("tokengate", 1)])


def test_every_stage_of_a_chain_gets_the_model_token_count():
    """TensorRT needs K's bounds as constants: later stages' N is a size tensor, so all get the first stage's N."""
    model = _chain()
    assert prepare_onnx.prepare_for_tensorrt(model) == 3
    assert [_attrs(n)["max_tokens"] for n in _token_select_nodes(model)] == [197, 197, 197]


def test_an_explicit_token_count_wins_and_an_unknown_one_is_refused(tmp_path: Path):
    model = _chain(tokens=197)
    prepare_onnx.prepare_for_tensorrt(model, 257)
    assert {_attrs(n)["max_tokens"] for n in _token_select_nodes(model)} == {257}
    dynamic = _chain()
    dynamic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "tokens"  # N unknown anywhere
    with pytest.raises(TokenGateError, match="static token count"):
        prepare_onnx.prepare_for_tensorrt(dynamic)
    src = tmp_path / "dynamic.onnx"
    onnx.save(dynamic, str(src))
    assert prepare_onnx.main([str(src), str(tmp_path / "out.onnx"), "--max-tokens", "50"]) == 0
    assert {_attrs(n)["max_tokens"] for n in _token_select_nodes(onnx.load(str(tmp_path / "out.onnx")))} == {50}
    assert prepare_onnx.main([str(src), str(tmp_path / "out2.onnx")]) == 2

"""Cutting a region out of a graph and timing it unprofiled: the cut must compute exactly what the region computes
inside the whole model, and the timer must report one share per region. Timings themselves are not asserted."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from pipeline.export.selection import selection_regions
from onnx import TensorProto, helper, numpy_helper

from pipeline.bench.selection_share import check_names, cut_region, region_inputs, tapped, time_regions
from pipeline.runners.ort_runner import OrtRunner
from pipeline.errors import TokenGateError
from pipeline.export import schema
from pipeline.runtime import import_onnxruntime
from tests.onnx_models import two_stage_graph


def _values(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of `model` on input x, from one run of the tapped model."""
    ort = import_onnxruntime()
    every = [t for n in model.graph.node for t in n.output]
    session = ort.InferenceSession(tapped(model, every).SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    return {**values, "x": x}


def _run_cut(model: onnx.ModelProto, names: set[str], values: dict[str, np.ndarray]):
    cut = cut_region(model, names, {t: values[t].dtype for t in region_inputs(model, names)})
    session = import_onnxruntime().InferenceSession(cut.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return cut, dict(zip(cut.outputs, session.run(cut.outputs, {t: values[t] for t in cut.inputs})))


def test_cut_selection_computes_what_it_computes_inside_the_model():
    model = two_stage_graph()
    values = _values(model, np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32))
    select = set(selection_regions(model)["select"])
    cut, out = _run_cut(model, select, values)
    assert "x" not in cut.inputs and {"a_scores", "b_scores"} <= set(cut.inputs)  # fed from outside the region
    assert {"a_y", "b_y"} <= set(cut.outputs)  # the masked tokens, read by each stage's LayerNormalization
    for name, value in out.items():
        np.testing.assert_array_equal(value, values[name])  # same kernels, same inputs: bit-identical


def test_cut_of_every_node_is_the_model():
    model = two_stage_graph()
    values = _values(model, np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32))
    cut, out = _run_cut(model, {n.name for n in model.graph.node}, values)
    assert cut.inputs == ["x"] and cut.outputs == [model.graph.output[0].name]
    np.testing.assert_array_equal(out[cut.outputs[0]], values[cut.outputs[0]])


def test_cut_refuses_an_empty_region():
    with pytest.raises(TokenGateError, match="cannot be timed"):
        cut_region(two_stage_graph(), {"no such node"}, {})


def _graph(nodes: list, inputs: list[str], outputs: list[str], inits: list = ()) -> onnx.ModelProto:
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [value(t) for t in inputs], [value(t) for t in outputs], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cut_skips_omitted_optional_tensors():
    """An omitted optional output ("") of a region node, read as an omitted optional input ("") outside, is no
    tensor: it must not become an output of the cut."""
    limit = numpy_helper.from_array(np.array(1.0, np.float32), "limit")
    model = _graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                    helper.make_node("Dropout", ["r"], ["d", ""], name="drop"),
                    helper.make_node("Clip", ["d", "", "limit"], ["y"], name="clip")], ["x"], ["y"], [limit])
    cut = cut_region(model, {"relu", "drop"}, {"x": np.float32})
    assert (cut.inputs, cut.outputs) == (["x"], ["d"])


def test_cut_follows_subgraphs_both_ways():
    """A region's If reads an outer tensor inside its branch (an input of the cut); a tensor of the region read only
    inside an outside node's branch is an output of the cut."""
    branch = lambda name, read: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [read], [name])], name, [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    model = _graph([helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=0),
                    helper.make_node("Greater", ["m", "x0"], ["c"], name="test"),
                    helper.make_node("If", ["c"], ["branch"], name="if",
                                     then_branch=branch("t", "x"), else_branch=branch("e", "x0")),
                    helper.make_node("Neg", ["x0"], ["n"], name="neg"),
                    helper.make_node("If", ["c"], ["y"], name="outer_if",
                                     then_branch=branch("t2", "branch"), else_branch=branch("e2", "n"))],
                   ["x", "x0"], ["y"])
    inner = cut_region(model, {"max", "test", "if"}, {"x": np.float32, "x0": np.float32})
    assert inner.inputs == ["x", "x0"]  # x0 is read by the else branch only
    assert inner.outputs == ["c", "branch"]  # branch is read only inside outer_if's then branch
    assert cut_region(model, {"neg"}, {"x0": np.float32}).outputs == ["n"]


def test_regions_need_unique_node_names():
    model = two_stage_graph()
    check_names(model)
    model.graph.node[1].name = model.graph.node[0].name
    with pytest.raises(TokenGateError, match="repeated node names"):
        check_names(model)
    model.graph.node[1].name = ""
    with pytest.raises(TokenGateError, match="unnamed"):
        check_names(model)


def test_tapped_model_adds_each_tensor_once():
    model = two_stage_graph()
    out = tapped(model, ["a_scores", "a_scores", model.graph.output[0].name, "x"])
    assert [o.name for o in out.graph.output] == [model.graph.output[0].name, "a_scores"]
    assert len(model.graph.output) == 1  # the original is left alone


def test_time_regions_reports_a_share_per_region(tmp_path):
    model = two_stage_graph()
    path = tmp_path / "two_stages.onnx"
    onnx.save(model, path)
    regions = {key: set(names) for key, names in selection_regions(model).items()}
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(b, 5, 4)).astype(np.float32) for b in (1, 3)]
    times = time_regions(model, {**regions, "empty": set()},
                         OrtRunner(path, threads=1, ours=False), batches, reps=2)
    assert (times.batches, times.reps) == (2, 2)
    assert set(times.shares) == set(times.region_s) == {"select", "scores", "empty"}
    for key in ("select", "scores"):
        assert times.region_s[key] > 0 and times.shares[key] > 0 and math.isfinite(times.shares[key])
    assert times.shares["empty"] == 0.0 and times.region_s["empty"] == 0.0
    assert times.model_s > 0
    assert set(times.to_dict()) == {"region_ms", "run_ms", "shares", "reps", "batches"}


def test_time_regions_cuts_a_fused_token_select_node(tmp_path):
    """The plugin flavor's region is one tokengate::TokenSelect node: its cut needs the custom-op library and the
    tokengate opset import, as the whole model does."""
    schema.register_schema()
    prefix = numpy_helper.from_array(np.array([1], np.int64), "one")
    end = numpy_helper.from_array(np.array([1 << 30], np.int64), "end")
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    theta = numpy_helper.from_array(np.array(0.0, np.float32), "theta")
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[2], keepdims=0),
             helper.make_node("Slice", ["mean", "one", "end", "axis"], ["scores"], name="patches"),
             helper.make_node("TokenSelect", ["x", "scores", "theta"], ["y", "lengths"], name="select",
                              domain="tokengate", num_prefix=1, min_keep=1)]
    graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "K", 4]),
                               helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"])],
                              [prefix, end, axis, theta])
    path = tmp_path / "fused.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), schema.opset_import()]), path)
    model = onnx.load(path)
    call = OrtRunner(path, threads=1, ours=False)
    assert call.plan.custom_ops
    batches = [np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)]
    times = time_regions(model, {"select": {"select"}}, call, batches, reps=1)
    assert times.region_s["select"] > 0 and times.shares["select"] > 0

"""Cutting a region out of a graph and timing it unprofiled: the cut must compute exactly what the region computes
inside the whole model, and the timer must report one share per region. Timings themselves are not asserted."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from pipeline.bench.profile import selection_regions
from pipeline.bench.region_time import cut_region, region_inputs, tapped, time_regions
from pipeline.bench.sessions import OrtCall
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
    select = selection_regions(model).select
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
    with pytest.raises(ValueError, match="cannot be timed"):
        cut_region(two_stage_graph(), {"no such node"}, {})


def test_tapped_model_adds_each_tensor_once():
    model = two_stage_graph()
    out = tapped(model, ["a_scores", "a_scores", model.graph.output[0].name, "x"])
    assert [o.name for o in out.graph.output] == [model.graph.output[0].name, "a_scores"]
    assert len(model.graph.output) == 1  # the original is left alone


def test_time_regions_reports_a_share_per_region(tmp_path):
    model = two_stage_graph()
    path = tmp_path / "two_stages.onnx"
    onnx.save(model, path)
    regions = selection_regions(model)
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(b, 5, 4)).astype(np.float32) for b in (1, 3)]
    times = time_regions(model, {"select": regions.select, "scores": regions.scores, "empty": set()},
                         OrtCall(path, threads=1), batches, reps=2)
    assert (times.batches, times.reps) == (2, 2)
    assert set(times.shares) == set(times.region_s) == {"select", "scores", "empty"}
    for key in ("select", "scores"):
        assert times.region_s[key] > 0 and times.shares[key] > 0 and math.isfinite(times.shares[key])
    assert times.shares["empty"] == 0.0 and times.region_s["empty"] == 0.0
    assert times.model_s > 0
    assert set(times.to_dict()) == {"region_ms", "run_ms", "shares", "reps", "batches"}

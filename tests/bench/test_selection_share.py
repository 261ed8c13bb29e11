"""TokenSelect attribution: the recorded regions on the graph ORT runs, and their share of a profile."""
from __future__ import annotations

import pytest

from pipeline.bench.selection_share import parse_profile, recorded_regions
from pipeline.export.selection import selection_regions
from tests.onnx_models import two_stage_graph


def _regions(model=None):
    model = model or two_stage_graph()
    return recorded_regions(selection_regions(model), 2, model)


def test_recorded_regions_keep_only_the_nodes_the_runtime_graph_has():
    model = two_stage_graph()
    recorded = selection_regions(model)
    optimized = two_stage_graph()
    optimized.graph.node.remove(next(n for n in optimized.graph.node if n.name == "a_ranked"))  # as if ORT fused it
    regions = recorded_regions(recorded, 2, optimized)
    assert "a_ranked" in recorded["select"] and "a_ranked" not in regions.select
    assert regions.select == set(recorded["select"]) - {"a_ranked"} and regions.scores == set(recorded["scores"])
    assert regions.found == pytest.approx(1 - 1 / len(set(recorded["select"]) | set(recorded["scores"])), abs=1e-12)
    assert regions.stages == 2 and "recorded" in regions.method


def test_profile_shares_skip_the_warm_up_run():
    regions = _regions()
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 1000},  # warm-up: ignored
        {"cat": "Node", "name": "a_keep_kernel_time", "ts": 10, "dur": 900, "args": {"op_name": "Greater"}},
        {"cat": "Session", "name": "model_run", "ts": 2000, "dur": 200},
        {"cat": "Node", "name": "a_h_kernel_time", "ts": 2010, "dur": 100, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "a_keep_kernel_time", "ts": 2110, "dur": 20, "args": {"op_name": "Greater"}},
        {"cat": "Node", "name": "b_y_kernel_time", "ts": 2130, "dur": 30, "args": {"op_name": "Mul"}},
        {"cat": "Node", "name": "a_raw_kernel_time", "ts": 2160, "dur": 10, "args": {"op_name": "ReduceMean"}},
        {"cat": "Node", "name": "fused_by_ort_kernel_time", "ts": 2170, "dur": 40, "args": {"op_name": "Gemm"}},
    ]
    names = {n.name for n in two_stage_graph().graph.node}
    shares = parse_profile(events, regions, names)
    assert shares.select_share == pytest.approx(50 / 200, abs=1e-12)  # keep 20 + y 30 over the run's 200 us
    assert shares.scores_share == pytest.approx(10 / 200, abs=1e-12)
    assert shares.matched == pytest.approx(160 / 200, abs=1e-12)  # the unknown node's 40 us are not matched
    assert shares.run_ms == pytest.approx(0.2, abs=1e-12)


def test_profile_shares_are_medians_over_runs():
    """Three runs after the warm-up; the middle one is slowed (twice the selection time): it does not set the share."""
    regions = _regions()
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}]  # warm-up
    for start, keep, run in ((1000, 20, 200), (2000, 60, 300), (3000, 30, 200)):
        events += [
            {"cat": "Session", "name": "model_run", "ts": start, "dur": run},
            {"cat": "Node", "name": "a_h_kernel_time", "ts": start + 5, "dur": 100, "args": {"op_name": "MatMul"}},
            {"cat": "Node", "name": "a_keep_kernel_time", "ts": start + 110, "dur": keep, "args": {"op_name": "Greater"}},
        ]
    shares = parse_profile(events, regions, {n.name for n in two_stage_graph().graph.node})
    assert shares.runs == 3
    assert shares.select_share == pytest.approx(30 / 200, abs=1e-12)  # per-run 0.10, 0.20, 0.15: the median
    assert shares.run_ms == pytest.approx(0.2, abs=1e-12)
    assert shares.scores_share == 0.0

"""The weight-streaming probe: megabytes a graph's matrix products read, the Gemm chains it times, and its bound."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.export.run_export import export_run
from tests.conftest import make_run, tiny_config
from tools.weight_stream import bound, file_megabytes, gemm_chain, main, weight_megabytes


def _init(name: str, shape: tuple[int, ...], dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


def test_megabytes_count_each_matrix_read_of_every_graph():
    """A weight read by two Gemms counts twice, a Conv's filters and an If branch's MatMul (an outer and an own
    initializer) count, a bias added by Add does not."""
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["y", "outer_w"], ["a"]), helper.make_node("MatMul", ["a", "own_w"], ["b"])],
        "then", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [_init("own_w", (4, 4), np.float16)])
    else_graph = helper.make_graph([helper.make_node("Identity", ["y"], ["c"])], "else", [],
                                   [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Conv", ["x", "filters"], ["conv"]),
        helper.make_node("Flatten", ["conv"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["g1"]),
        helper.make_node("Gemm", ["g1", "w"], ["g2"]),
        helper.make_node("Add", ["g2", "bias"], ["y"]),
        helper.make_node("If", ["flag"], ["out"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2]),
                     helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [_init("filters", (2, 3, 2, 2)), _init("w", (8, 8)), _init("bias", (8,)), _init("outer_w", (8, 4))])
    model = helper.make_model(graph)
    expected = 2 * 3 * 2 * 2 * 4 + 2 * 8 * 8 * 4 + 8 * 4 * 4 + 4 * 4 * 2  # bytes: filters, w twice, outer_w, own_w
    assert weight_megabytes(model) == pytest.approx(expected / 1e6, rel=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_gemm_chains_share_or_own_their_weights_and_keep_the_scale(shared):
    import onnxruntime as ort

    model = gemm_chain(width=16, hidden=48, pairs=6, shared=shared)
    weights = [t for t in model.graph.initializer if t.name.endswith(".weight")]
    assert len(weights) == (2 if shared else 12)
    # 12 matrices and their biases, read alike whether shared or not
    assert weight_megabytes(model) == pytest.approx(6 * (2 * 16 * 48 + 48 + 16) * 4 / 1e6, rel=1e-12)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32)
    y = session.run(None, {"x": x})[0]
    assert y.shape == (10, 16)
    assert 0.05 < y.std() / x.std() < 20  # 12 products scaled by 1/sqrt(fan-in): no decay into denormals


def test_bound_keeps_streaming_and_shrinks_the_rest():
    # dense 40 ms, of which 80 MB x 30 us = 2.4 ms stream; packed streams 60 MB = 1.8 ms; the rest halves
    assert bound(40.0, 80.0, 60.0, 30.0, 2.0) == pytest.approx(40.0 / ((40.0 - 2.4) / 2 + 1.8), rel=1e-12)
    assert bound(40.0, 80.0, 60.0, 0.0, 2.0) == pytest.approx(2.0, rel=1e-12)  # free streaming: the FLOPs ratio


def test_bad_rows_and_a_missing_export_give_one_line(tmp_path, capsys):
    assert main(["--rows", "4,x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rows" in err and "Fix:" in err
    assert main([str(tmp_path), "--rows", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"tokengate export {tmp_path}" in err


@pytest.mark.slow
def test_bound_of_a_runs_shipped_files(tmp_path, fmnist_root, capsys):
    run = make_run(tmp_path / "run", tiny_config(fmnist_root, gates={"token_stages": [2, 3], "init_threshold": 1.0}))
    export_run(run, ["packed", "dense"])
    out = tmp_path / "stream.json"
    assert main([str(run), "--batch", "2", "--images", "6", "--rows", "4,8", "--width", "16", "--hidden", "32",
                 "--pairs", "3", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [c["rows"] for c in result["costs"]] == [4, 8]
    assert result["us_per_mb"] == pytest.approx(float(np.median([c["us_per_mb"] for c in result["costs"]])))
    run_bound = result["run"]
    assert run_bound["batch"] == 2 and run_bound["images"] == 6 and run_bound["flops_ratio"] > 1.0
    # the batched branch of the packed file reads the same student weights the dense file's teacher reads, or fewer
    assert run_bound["packed_mb"] == pytest.approx(file_megabytes(run / "model.packed.onnx", 2), rel=1e-12)
    assert 0 < run_bound["packed_mb"] <= run_bound["dense_mb"]
    assert run_bound["bound_speedup"] == pytest.approx(
        bound(run_bound["dense_ms"], run_bound["dense_mb"], run_bound["packed_mb"], result["us_per_mb"],
              run_bound["flops_ratio"]), rel=1e-12)
    assert run_bound["speedup"] == pytest.approx(run_bound["dense_ms"] / run_bound["packed_ms"], rel=1e-12)
    assert "bound with weight streaming" in capsys.readouterr().out

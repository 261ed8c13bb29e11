"""The node-cost probe: its graph is what it says, and it reports every figure (their sizes are not asserted)."""
from __future__ import annotations

import math

import numpy as np

from tools.node_cost import main, measure, reshape_chain
from pipeline.runtime import import_onnxruntime


def test_reshape_chain_is_n_reshapes_that_return_the_input():
    model = reshape_chain(7)
    assert [n.op_type for n in model.graph.node] == ["Reshape"] * 7 + ["Identity"]
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(12, dtype=np.float32)[None, :]
    np.testing.assert_array_equal(session.run(None, {"x": x})[0].reshape(-1), x.reshape(-1))


def test_measure_reports_every_figure():
    cost = measure(nodes=20, runs=3, threads=1)
    assert cost.nodes == 20
    for value in (cost.unprofiled_us, cost.profiled_run_us, cost.profiled_kernel_us):
        assert value > 0 and math.isfinite(value)


def test_cli_refuses_a_bad_count(capsys):
    assert main(["--nodes", "0"]) == 2
    assert "--nodes" in capsys.readouterr().err

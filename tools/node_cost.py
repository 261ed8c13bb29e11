"""What one small ONNX Runtime node costs, unprofiled and as ORT's profiler reports it.

    python -m tools.node_cost [--nodes 500] [--runs 200] [--threads 2]

A chain of Reshape nodes on a 64-float tensor does next to no work, so its time per node is about the executor's
fixed cost. The profiled figure is the median `kernel_time` ORT records for those same nodes. Their
difference is what the profiler adds to every node, and why `tokengate bench --selection-share` times regions
without it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.runtime import session_options


@dataclass
class NodeCost:
    unprofiled_us: float  # median whole-run time / nodes, profiler off
    profiled_run_us: float  # the same, profiler on
    profiled_kernel_us: float  # median kernel_time ORT's profiler records per node
    nodes: int


def reshape_chain(nodes: int) -> onnx.ModelProto:
    """x [1, n] -> Reshape to [-1] -> Reshape to [1, -1] -> ... (`nodes` Reshapes) -> y."""
    flat = numpy_helper.from_array(np.array([-1], np.int64), "flat")
    row = numpy_helper.from_array(np.array([1, -1], np.int64), "row")
    chain, previous = [], "x"
    for i in range(nodes):
        chain.append(helper.make_node("Reshape", [previous, "flat" if i % 2 == 0 else "row"], [f"t{i}"],
                                      name=f"reshape{i}"))
        previous = f"t{i}"
    chain.append(helper.make_node("Identity", [previous], ["y"], name="out"))
    graph = helper.make_graph(chain, "reshape_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [flat, row])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure(nodes: int = 500, runs: int = 200, threads: int = 2) -> NodeCost:
    from pipeline.runtime import import_onnxruntime

    ort = import_onnxruntime()
    model = reshape_chain(nodes).SerializeToString()
    x = np.zeros((1, 64), np.float32)
    per_node, kernel = {}, float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        for profiled in (False, True):
            options = session_options(threads, stop_spinning_after_run=True)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every Reshape
            if profiled:
                options.enable_profiling = True
                options.profile_file_prefix = str(Path(tmp) / "chain")
            session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
            for _ in range(10):
                session.run(None, {"x": x})
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - start)
            per_node[profiled] = 1e6 * float(np.median(times)) / nodes
            if profiled:
                events = json.loads(Path(session.end_profiling()).read_text())
                kernel = float(np.median([e["dur"] for e in events if e.get("cat") == "Node"
                                          and str(e.get("name", "")).startswith("reshape")
                                          and e["name"].endswith("_kernel_time")]))
    return NodeCost(per_node[False], per_node[True], kernel, nodes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.node_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.runs < 1 or args.threads < 0:
        print("error: --nodes and --runs must be positive and --threads at least 0", file=sys.stderr)
        return 2
    cost = measure(args.nodes, args.runs, args.threads)
    print(f"{cost.nodes} Reshape nodes: {cost.unprofiled_us:.2f} us a node unprofiled; profiled, "
          f"{cost.profiled_run_us:.2f} us a node of run time and {cost.profiled_kernel_us:.2f} us of kernel_time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the Python TokenSelect op costs in ONNX Runtime: plugin vs native flavor throughput, and the op's share.

    python -m pipeline.ops.measure runs/NAME [--batch-sizes 1,32] [--threads 1] [--bridge array|stock]

Throughput is the median over rounds of back-to-back runs, the flavors interleaved so that a busy machine slows
both alike. The share is TokenSelect's kernel time (bridge, GIL and NumPy included) over `model_run` time, from
ONNX Runtime's own profiler. `--bridge stock` measures onnxruntime-extensions' list-based output path instead of
ours; registration is once per process, so compare the two in two runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.contract import OP_TYPE


def _session(path: Path, library: str, threads: int, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = profile
    options.register_custom_ops_library(library)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _seconds_per_batch(session, feed: dict, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    return (time.perf_counter() - start) / runs


def op_share(path: Path, library: str, threads: int, feed: dict, runs: int) -> tuple[float, float]:
    """(TokenSelect kernel time / model_run time, microseconds per TokenSelect call) from ORT's profiler."""
    session = _session(path, library, threads, profile=True)
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    total = sum(e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    ours = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            and e.get("args", {}).get("op_name") == OP_TYPE]
    return sum(ours) / total, statistics.median(ours)


def main() -> None:
    from pipeline.ops.ort_register import register

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bridge", choices=("array", "stock"), default="array")
    args = parser.parse_args()
    library = register(fast_outputs=args.bridge == "array")
    from pipeline.export.metadata import read_info

    shape = read_info(args.run / "model.plugin.onnx").input_shape
    print(f"ONNX Runtime CPU, {args.threads} intra-op thread(s), {args.bridge} output bridge, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        feed = {"images": np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)}
        sessions = {f: _session(args.run / f"model.{f}.onnx", library, args.threads) for f in ("plugin", "native")}
        runs = max(5, 256 // batch)
        for session in sessions.values():
            _seconds_per_batch(session, feed, 5)
        times: dict[str, list[float]] = {f: [] for f in sessions}
        for _ in range(args.rounds):
            for flavor, session in sessions.items():
                times[flavor].append(_seconds_per_batch(session, feed, runs))
        share, per_call = op_share(args.run / "model.plugin.onnx", library, args.threads, feed, runs)
        line = ", ".join(f"{f} {batch / statistics.median(t):7.0f} img/s ({statistics.median(t) * 1e3:.2f} ms)"
                         for f, t in times.items())
        print(f"batch {batch:3d}: {line}; TokenSelect {share:.1%} of plugin run time, {per_call:.0f} us a call")


if __name__ == "__main__":
    main()

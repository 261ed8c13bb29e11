"""What streaming a model's weights into the cores costs each matrix product, and the bound it puts on a run's
packed file against its dense one.

    python -m tools.weight_stream [RUN] [--batch 1] [--images 12] [--rows 40,70,100,150,197] [--threads 2]

Token pruning shrinks a matrix product's rows, not its weights, and every weight matrix is read from memory once per
batch however few rows it multiplies. The probe times two chains of Gemm pairs (--width -> --hidden -> --width, a
ViT block's MLP) at each row count, taking turns: one whose pairs all read one pair of matrices, which stay in the
cores' caches, and one whose pairs each read their own, as a model's layers do. The difference per megabyte of
weights read is the streaming cost, and the cached chain's rate is what the kernels compute at that row count.

With RUN, it counts the weight megabytes that the run's shipped dense and packed files read per batch (the
initializers their Gemm, MatMul and Conv nodes read, in the branch that runs `--batch` images), times both files in
turns on the images `tokengate bench RUN` times, and reports the packed file's bound: the dense time less its
streaming, shrunk by the FLOPs ratio, plus the packed file's own streaming. No graph change passes that bound while
the kernels stream their weights at this machine's cost; a batch of B images shares one read, so the bound nears
the FLOPs ratio as B grows.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.artifacts import write_json
from pipeline.errors import TokenGateError, fail
from tools.op_shares import check_run, macs_ratio, timed_batches

MATRIX_OPS = frozenset({"Gemm", "MatMul", "Conv"})  # ops that read a weight matrix (or filter bank) whole per call
MB = 1e6


@dataclass
class RowCost:
    rows: int
    cached_us: float  # the chain whose pairs share one pair of matrices, per Gemm
    streamed_us: float  # the chain whose pairs read their own, per Gemm
    cached_gmacs: float  # multiply-adds per second, in billions
    streamed_gmacs: float
    us_per_mb: float  # (streamed - cached) per megabyte of weights a Gemm reads


@dataclass
class RunBound:
    batch: int
    images: int
    flops_ratio: float  # dense MACs / packed MACs on these images
    dense_mb: float  # weight megabytes read per batch
    packed_mb: float
    dense_ms: float  # per batch, timed in turns with the packed file
    packed_ms: float
    speedup: float
    bound_speedup: float  # dense time / ((dense time - dense streaming) / FLOPs ratio + packed streaming)
    bound_efficiency: float


@dataclass
class WeightStream:
    width: int
    hidden: int
    pairs: int
    threads: int
    costs: list[RowCost]
    us_per_mb: float  # the median over the row counts
    run: Optional[RunBound] = field(default=None)


def weight_megabytes(model) -> float:
    """Megabytes of the initializers that `model`'s Gemm, MatMul and Conv nodes read (its subgraphs' too), each
    counted once per node that reads it."""
    from onnx import helper

    from pipeline.export.graph import subgraphs

    def size(tensor) -> int:
        return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize

    def walk(graph, outer: dict[str, int]) -> int:
        sizes = {**outer, **{t.name: size(t) for t in graph.initializer}}
        total = 0
        for node in graph.node:
            if node.op_type in MATRIX_OPS:
                total += sum(sizes.get(name, 0) for name in node.input)
            for inner in subgraphs(node):
                total += walk(inner, sizes)
        return total

    return walk(model.graph, {}) / MB


def file_megabytes(path: Path, batch: int) -> float:
    """`weight_megabytes` of the graph that runs batches of `batch` images (a packed file's branch for it)."""
    import onnx

    from pipeline.export.batch_one import branch_model

    return weight_megabytes(branch_model(onnx.load(str(path)), batch))


def gemm_chain(width: int, hidden: int, pairs: int, shared: bool, seed: int = 0):
    """`pairs` Gemm pairs width -> hidden -> width over [rows, width]; `shared`: every pair reads one pair of
    matrices. Weights scaled by 1/sqrt(fan-in), so the values neither vanish into denormals nor grow."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    initializers, nodes, x = [], [], "x"
    for i in range(pairs):
        own = 0 if shared else i
        for tag, (fan_in, fan_out) in (("up", (width, hidden)), ("down", (hidden, width))):
            weight, bias = f"{tag}{own}.weight", f"{tag}{own}.bias"
            if i == own:
                matrix = rng.standard_normal((fan_in, fan_out)).astype(np.float32) / np.float32(np.sqrt(fan_in))
                initializers += [numpy_helper.from_array(matrix, weight),
                                 numpy_helper.from_array(np.zeros(fan_out, np.float32), bias)]
            nodes.append(helper.make_node("Gemm", [x, weight, bias], [f"{tag}{i}"]))
            x = f"{tag}{i}"
    rows = ["rows", width]
    graph = helper.make_graph(nodes, "gemm_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, rows)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, rows)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def row_costs(rows: Sequence[int], width: int, hidden: int, pairs: int, threads: int, rounds: int) -> list[RowCost]:
    """Both chains at each row count, taking turns batch by batch (`pipeline.bench.timing.run_rounds`)."""
    import onnx

    from pipeline.bench.timing import run_rounds
    from pipeline.runners.ort_runner import OrtRunner

    pool = np.random.default_rng(1).standard_normal((max(rows), width)).astype(np.float32)
    gemm_mb = width * hidden * 4 / MB  # one matrix, float32
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for name in ("cached", "streamed"):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(gemm_chain(width, hidden, pairs, shared=name == "cached"), str(path))
            runners[name] = OrtRunner(path, threads=threads, stop_spinning_after_run=True, ours=False)
        timings = run_rounds(runners, pool, rows, rounds)
    out = []
    for count in rows:
        per_gemm = {name: float(np.median(timings.seconds[(name, count)])) * 1e6 / (2 * pairs) for name in runners}
        macs = count * width * hidden
        out.append(RowCost(count, per_gemm["cached"], per_gemm["streamed"], macs / per_gemm["cached"] / 1e3,
                           macs / per_gemm["streamed"] / 1e3, (per_gemm["streamed"] - per_gemm["cached"]) / gemm_mb))
    return out


def bound(dense_ms: float, dense_mb: float, packed_mb: float, us_per_mb: float, flops_ratio: float) -> float:
    """The packed file's best speedup when all but the weight streaming shrinks with the FLOPs ratio."""
    streaming = us_per_mb / 1000.0
    return dense_ms / ((dense_ms - dense_mb * streaming) / flops_ratio + packed_mb * streaming)


def run_bound(run_dir: Path, batch: int, images: int, threads: int, rounds: int, us_per_mb: float) -> RunBound:
    from pipeline.bench.timing import run_rounds
    from pipeline.runners.ort_runner import OrtRunner

    batches = timed_batches(run_dir, batch, images)
    flops_ratio, count = macs_ratio(run_dir, batches, threads)
    files = {name: run_dir / f"model.{name}.onnx" for name in ("dense", "packed")}
    runners = {name: OrtRunner(path, threads=threads, stop_spinning_after_run=True) for name, path in files.items()}
    pool = np.concatenate(batches)
    timings = run_rounds(runners, pool, [batch], rounds)
    ms = {name: float(np.median(timings.seconds[(name, batch)].mean(axis=1))) * 1000 for name in files}
    megabytes = {name: file_megabytes(path, batch) for name, path in files.items()}
    best = bound(ms["dense"], megabytes["dense"], megabytes["packed"], us_per_mb, flops_ratio)
    return RunBound(batch, count, flops_ratio, megabytes["dense"], megabytes["packed"], ms["dense"], ms["packed"],
                    ms["dense"] / ms["packed"], best, best / flops_ratio)


def report(result: WeightStream) -> str:
    lines = [f"Gemm pairs {result.width} -> {result.hidden} -> {result.width}, {result.pairs} pairs, "
             f"{result.threads} threads; per Gemm:",
             f"{'rows':>5s} {'cached us':>10s} {'streamed us':>12s} {'cached GMAC/s':>14s} {'streamed GMAC/s':>16s} "
             f"{'us per MB':>10s}"]
    for c in result.costs:
        lines.append(f"{c.rows:5d} {c.cached_us:10.1f} {c.streamed_us:12.1f} {c.cached_gmacs:14.1f} "
                     f"{c.streamed_gmacs:16.1f} {c.us_per_mb:10.1f}")
    lines.append(f"streaming cost: {result.us_per_mb:.1f} us per MB of weights (median over the row counts)")
    run = result.run
    if run is not None:
        lines += [
            f"batch {run.batch}, {run.images} images: weights read per batch {run.dense_mb:.1f} MB dense, "
            f"{run.packed_mb:.1f} MB packed; dense {run.dense_ms:.2f} ms, packed {run.packed_ms:.2f} ms per batch",
            f"FLOPs ratio {run.flops_ratio:.2f}, speedup {run.speedup:.2f}x (efficiency "
            f"{run.speedup / run.flops_ratio:.2f}); bound with weight streaming {run.bound_speedup:.2f}x "
            f"(efficiency {run.bound_efficiency:.2f})",
        ]
    return "\n".join(lines)


def parse_rows(text: str) -> list[int]:
    try:
        rows = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise fail(f"--rows {text!r} is not a comma list of integers", "e.g. --rows 40,70,100,150,197") from None
    if not rows or rows[0] < 1:
        raise fail(f"--rows {text!r} needs at least one row count, each at least 1", "e.g. --rows 40,70,100,150,197")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.weight_stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, nargs="?", help="a run directory with model.dense.onnx and model.packed.onnx")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--rows", default="40,70,100,150,197", help="row counts of the Gemm chains (comma list)")
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--pairs", type=int, default=24, help="Gemm pairs per chain")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        rows = parse_rows(args.rows)
        if min(args.width, args.hidden, args.pairs, args.rounds) < 1:
            raise fail("--width, --hidden, --pairs and --rounds must each be at least 1", "e.g. --pairs 24")
        if args.run is not None:
            check_run(args.run, args.batch, args.images)
        costs = row_costs(rows, args.width, args.hidden, args.pairs, args.threads, args.rounds)
        us_per_mb = float(np.median([c.us_per_mb for c in costs]))
        result = WeightStream(args.width, args.hidden, args.pairs, args.threads, costs, us_per_mb)
        if args.run is not None:
            result.run = run_bound(args.run, args.batch, args.images, args.threads, args.rounds, us_per_mb)
    except TokenGateError as error:
        print(f"weight_stream: {error}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json:
        write_json(args.json, asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

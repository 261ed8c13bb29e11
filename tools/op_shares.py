"""Where a run's packed file spends its time against its dense one, op type by op type, and the ceiling that the
Gemm kernels put on its speedup.

    python -m tools.op_shares RUN [--batch 1] [--images 12] [--threads 2]

Both shipped files (RUN/model.dense.onnx, RUN/model.packed.onnx) run the same images, `--batch` at a time and taking
turns batch by batch, under ONNX Runtime's profiler, on the images `tokengate bench RUN` times (the bench's photos
for a config's run). Kernel time is summed per op type; an If or Loop counts nothing itself, since ORT profiles its
branch's nodes one by one.

The ceiling: the packed file's Gemms keep their measured time and every other op shrinks exactly with the MACs (the
FLOPs ratio of these images, from the kept counts the file reports). No graph change reaches past it without faster
Gemm kernels; LayerNorm, residual adds and the patch embedding cannot even reach it, since static pruning does not
narrow them. ORT's profiler adds a fixed cost to every node (tools.node_cost), so these are shares of a profile,
not timings: `tokengate bench` gives the speedups.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.artifacts import write_json
from pipeline.bench.selection_share import run_kernels
from pipeline.errors import TokenGateError, fail

CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})  # their time is their body's, profiled node by node
GEMM = "Gemm"


@dataclass
class OpShares:
    batch: int
    images: int
    dense_us: dict[str, float]  # op type -> kernel time per batch
    packed_us: dict[str, float]
    flops_ratio: float  # dense MACs / packed MACs on these images
    gemm_ratio: float  # dense Gemm time / packed Gemm time
    profiled_speedup: float  # dense kernel time / packed kernel time
    ceiling_speedup: float  # with every op but the Gemms at the FLOPs ratio
    ceiling_efficiency: float


def kernel_times(paths: Sequence[Path], batches: Sequence[np.ndarray], threads: int,
                 rounds: int = 3) -> list[dict[str, float]]:
    """Kernel time per op type per batch (microseconds) of each file, the files taking turns batch by batch (so a
    machine that slows down slows them alike), after one warm-up pass. Each file runs through `OrtRunner` under
    ONNX Runtime's profiler, as the bench's selection share does."""
    from pipeline.runners.ort_runner import OrtRunner

    with tempfile.TemporaryDirectory() as tmp:
        runners = [OrtRunner(path, threads=threads, stop_spinning_after_run=True,
                             profile_prefix=str(Path(tmp) / f"profile{i}")) for i, path in enumerate(paths)]
        for runner in runners:
            runner.infer(batches[0])
        for _ in range(rounds):
            for images in batches:
                for runner in runners:
                    runner.infer(images)
        traces = [json.loads(Path(runner.end_profiling()).read_text()) for runner in runners]
        del runners
    out = []
    for events in traces:
        runs, kernels = run_kernels(events)  # the warm-up run left out
        totals: Counter = Counter()
        for event in kernels:
            op = event.get("args", {}).get("op_name")
            if op not in CONTROL_FLOW:
                totals[op] += event["dur"]
        out.append({op: total / len(runs) for op, total in totals.most_common()})
    return out


def check_run(run_dir: Path, batch: int, images: int) -> None:
    """Refuse, in one line with its fix, a run without both shipped files or a batch the images cannot fill."""
    missing = [f for f in ("model.dense.onnx", "model.packed.onnx") if not (run_dir / f).is_file()]
    if missing:
        raise fail(f"{run_dir} has no {missing[0]}", f"tokengate export {run_dir} --flavor packed,dense")
    if batch < 1 or images < batch:
        raise fail("--batch must be at least 1 and --images at least --batch", "e.g. --batch 1 --images 12")


def timed_batches(run_dir: Path, batch: int, images: int) -> list[np.ndarray]:
    """The images `tokengate bench RUN` times (the validation split where the run's caps were fitted on it, the
    bench photos otherwise), `batch` at a time."""
    from pipeline.bench.run import bench_images
    from pipeline.bench.timing import batch_at, batches_per_round
    from pipeline.config import load_run_config

    pool = bench_images(load_run_config(run_dir), images).inputs.numpy()
    return [batch_at(pool, batch, i) for i in range(batches_per_round(len(pool), batch))]


def macs_ratio(run_dir: Path, batches: Sequence[np.ndarray], threads: int) -> tuple[float, int]:
    """Dense MACs / packed MACs per image on `batches`, from the kept counts the shipped packed file reports, and
    the number of images."""
    import torch

    from pipeline.config import load_run_config
    from pipeline.models import load_student, load_teacher
    from pipeline.runners.ort_runner import OrtRunner

    cfg = load_run_config(run_dir)
    runner = OrtRunner(run_dir / "model.packed.onnx", threads=threads)
    kept = np.concatenate([runner.infer(b).kept_tokens for b in batches])
    del runner
    student, teacher = load_student(run_dir, cfg), load_teacher(run_dir, cfg)
    packed_macs = float(student.macs(torch.from_numpy(kept).double()).mean())  # int32 would overflow
    dense_macs = float(teacher.macs(torch.zeros(len(kept), 0, dtype=torch.float64)).mean())
    return dense_macs / packed_macs, len(kept)


def measure(run_dir: Path, batch: int = 1, images: int = 12, threads: int = 2) -> OpShares:
    batches = timed_batches(run_dir, batch, images)
    flops_ratio, count = macs_ratio(run_dir, batches, threads)
    dense, packed = kernel_times([run_dir / "model.dense.onnx", run_dir / "model.packed.onnx"], batches, threads)
    if GEMM not in dense or GEMM not in packed:
        raise fail(f"{run_dir} runs no {GEMM} node in one of its files, so there is no Gemm ceiling to report",
                   "export both files with this version (tokengate export RUN --flavor packed,dense)")
    dense_total, packed_total = sum(dense.values()), sum(packed.values())
    ceiling = dense_total / (packed[GEMM] + (dense_total - dense[GEMM]) / flops_ratio)
    return OpShares(batch, count, dense, packed, flops_ratio, dense[GEMM] / packed[GEMM],
                    dense_total / packed_total, ceiling, ceiling / flops_ratio)


def report(shares: OpShares) -> str:
    lines = [f"{'op':24s} {'dense us':>10s} {'packed us':>10s} {'ratio':>6s}"]
    for op in sorted(set(shares.dense_us) | set(shares.packed_us),
                     key=lambda o: -(shares.dense_us.get(o, 0) + shares.packed_us.get(o, 0))):
        d, p = shares.dense_us.get(op, 0.0), shares.packed_us.get(op, 0.0)
        lines.append(f"{op:24s} {d:10.0f} {p:10.0f} {d / p if p else float('inf'):6.2f}")
    packed_total = sum(shares.packed_us.values())
    lines += [
        f"batch {shares.batch}, {shares.images} images: FLOPs ratio {shares.flops_ratio:.2f}, profiled speedup "
        f"{shares.profiled_speedup:.2f}x",
        f"Gemm: {shares.gemm_ratio:.2f}x less time (efficiency {shares.gemm_ratio / shares.flops_ratio:.2f}), "
        f"{100 * shares.packed_us.get(GEMM, 0.0) / packed_total:.0f}% of the packed file's kernel time",
        f"ceiling with every other op at the FLOPs ratio: {shares.ceiling_speedup:.2f}x, efficiency "
        f"{shares.ceiling_efficiency:.2f}",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.op_shares", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with model.dense.onnx and model.packed.onnx")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        check_run(args.run, args.batch, args.images)
        shares = measure(args.run, args.batch, args.images, args.threads)
    except TokenGateError as error:
        print(f"op_shares: {error}", file=sys.stderr)
        return 2
    print(report(shares))
    if args.json:
        write_json(args.json, asdict(shares))
    return 0


if __name__ == "__main__":
    sys.exit(main())

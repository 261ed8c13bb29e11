"""The capped flavor at several cap quantiles: caps, truncation rate, top-1 and speed against dense, per quantile.

    python -m tools.capped_quantiles RUN [--quantiles 0.9,0.95,0.99,1.0] [--batch-sizes 1,16] [--rounds 4]
        [--json capped.json]

For each quantile, the run's files are copied into a scratch run directory (RUN/.capped-q<Q>-*/, removed after its
row), where `tokengate export`'s own code writes its model.capped.onnx and `tokengate bench`'s own code times it
against model.dense.onnx on ONNX Runtime CPU. Top-1 is the capped file's on the whole validation split (a trained
run), via the runner `tokengate validate` uses. The shipped RUN/model.capped.onnx is left as it is.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pipeline.artifacts import read_json, write_json
from pipeline.bench.options import BenchOptions
from pipeline.bench.run import run_bench
from pipeline.export.run_export import export_run

RUN_FILES = ("config.json", "teacher.safetensors", "student.safetensors")


def copy_run(run: Path, out: Path) -> Path:
    for name in RUN_FILES:
        shutil.copy2(run / name, out / name)
    return out


def measure(run: Path, quantile: float, batch_sizes: Sequence[int], rounds: int, images: Optional[int] = None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f".capped-q{quantile:g}-", dir=run) as scratch_dir:
        scratch = copy_run(run, Path(scratch_dir))
        export_run(scratch, ["capped", "dense"], quantile=quantile)
        capped = read_json(scratch / "summary.json")["capped"]
        report = run_bench(scratch, BenchOptions(batch_sizes=tuple(batch_sizes), rounds=rounds, flavors=("capped",),
                                                 images=images, show=False))
    top1 = next((r["top1"] for r in report["rows"] if r["model"] == "capped"), None)
    return {"quantile": quantile, "caps": capped["caps"], "truncation_rate": capped["truncation_rate"], "top1": top1,
            "speedup_vs_dense": {str(b): report["speedup_vs_dense"][f"capped@{b}"] for b in batch_sizes},
            "sha256": report["files"]["capped"]["sha256"], "device": report["device"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.capped_quantiles", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--quantiles", default="0.9,0.95,0.99,1.0")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=None, help="timed images (default: the bench's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    quantiles = [float(q) for q in args.quantiles.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    for q in quantiles:
        rows.append(measure(args.run, q, sizes, args.rounds, args.images))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| quantile | caps | truncated | top-1 | " + " | ".join(f"speedup b{b}" for b in sizes) + " |")
    print("|---|---|---|---|" + "---|" * len(sizes))
    for r in rows:
        top1 = "n/a" if r["top1"] is None else f"{r['top1']:.2f}"
        print(f"| {r['quantile']:g} | {','.join(map(str, r['caps']))} | {100 * r['truncation_rate']:.2f}% | {top1} | "
              + " | ".join(f"{r['speedup_vs_dense'][str(b)]:.2f}x" for b in sizes) + " |")
    if args.json:
        write_json(args.json, {"run": str(args.run), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time ONNX files against each other in one interleaved run on ONNX Runtime CPU: an A/B of two builds of a graph.

    python -m tools.ab_time --config configs/deit-s-224.yaml --baseline new-dense \
        new-dense=runs/bench/deit-s-224/model.dense.onnx new-packed=runs/bench/deit-s-224/model.packed.onnx \
        old-dense=OLD/dense.onnx old-packed=OLD/packed.onnx [--pair old-packed=old-dense] [--batch-sizes 1,16]

A file given as PATH@B is the branch of a packed file that runs batches of B images, cut out as a model of its own
(`pipeline.export.batch_one.branch_model`): `packed=P branch=P@1 --pair packed=branch` times what the If that
chooses it costs at batch 1.

The files may come from other checkouts of the project (no TokenGate metadata is needed): each runs through the
bench's ORT runner and its interleaved rounds (`pipeline.bench.timing`: the files take turns batch by batch, in an
order that rotates, so that no file always runs right after the same one) on the config's bench photos. Each file's
speed is reported against `--baseline`, and each `--pair A=B` as A's speedup over B, so two builds' speedups over
their own dense baselines can be compared within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.bench.options import TURNS, BenchOptions
from pipeline.bench.timing import run_rounds
from pipeline.errors import TokenGateError, fail


def parse_named(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise fail(f"{what} {item!r} is not NAME=VALUE", "e.g. new-packed=runs/bench/deit-s-224/model.packed.onnx")
        out[name] = value
    return out


def branch_spec(value: str) -> tuple[Path, Optional[int]]:
    """PATH, or PATH@B (the branch of PATH for batches of B images)."""
    path, sep, batch = value.rpartition("@")
    if sep and batch.isdigit() and int(batch) >= 1:
        return Path(path), int(batch)
    return Path(value), None


def cut_branches(specs: dict[str, tuple[Path, Optional[int]]], folder: Path) -> dict[str, Path]:
    """The files to time: each PATH as it is, each PATH@B's branch written into `folder`."""
    import onnx

    from pipeline.export.batch_one import branch_model, is_joined
    from pipeline.export.metadata import load_export

    files = {}
    for name, (path, batch) in specs.items():
        if batch is None:
            files[name] = path
            continue
        model = load_export(path, load_external_data=True)
        if not is_joined(model):
            raise fail(f"{path} has no batch-one branch to cut out (@{batch})",
                       "pass a packed file that `tokengate export --flavor packed` wrote, or drop the @")
        files[name] = folder / f"{name}.onnx"
        onnx.save(branch_model(model, batch), str(files[name]))
    return files


def ab_time(files: dict[str, Path], pool: np.ndarray, batch_sizes: Sequence[int], rounds: int, threads: int,
            baseline: str, pairs: dict[str, str], sessions: int = BenchOptions.sessions,
            turns: str = BenchOptions.turns) -> dict:
    """Median seconds per batch of every file at every batch size, and the speedups asked for; `sessions` sessions
    of each file take turns round by round, as in `tokengate bench`."""
    from pipeline.runners.ort_runner import OrtRunner

    runners = {name: [OrtRunner(path, threads=threads, spin=False, ours=False) for _ in range(sessions)]
               for name, path in files.items()}
    timings = run_rounds(runners, pool, batch_sizes, rounds, turns=turns)
    rows = {}
    for batch in batch_sizes:
        median = {name: float(np.median(timings.seconds[(name, batch)].mean(axis=1))) for name in files}
        rows[batch] = {"median_ms": {k: v * 1000 for k, v in median.items()},
                       "vs_baseline": {k: median[baseline] / v for k, v in median.items()},
                       "pairs": {f"{a}/{b}": median[b] / median[a] for a, b in pairs.items()}}
    return {"files": {k: str(v) for k, v in files.items()}, "baseline": baseline, "rounds": rounds,
            "sessions": sessions, "turns": turns, "threads": threads, "images": len(pool), "batches": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipeline.bench.target import load_target
    from pipeline.images import load_images

    parser = argparse.ArgumentParser(prog="python -m tools.ab_time", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", metavar="NAME=PATH")
    parser.add_argument("--config", required=True, help="the geometry's config: its bench photos are the inputs")
    parser.add_argument("--baseline", required=True, help="the NAME every file's speed is reported against")
    parser.add_argument("--pair", action="append", default=[], metavar="A=B", help="also report A's speedup over B")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=BenchOptions.sessions,
                        help=f"sessions per file, taking turns round by round (default {BenchOptions.sessions})")
    parser.add_argument("--turns", choices=TURNS, default=BenchOptions.turns,
                        help="batch: the files take turns batch by batch; pool: each runs a round's batches back to "
                             f"back (default {BenchOptions.turns})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    try:
        specs = {name: branch_spec(p) for name, p in parse_named(args.files, "file").items()}
        pairs = parse_named(args.pair, "--pair")
        unknown = [n for n in [args.baseline, *pairs, *pairs.values()] if n not in specs]
        if unknown:
            raise fail(f"{', '.join(unknown)} is not one of the files' names", f"use one of {', '.join(specs)}")
        if args.rounds < 1 or args.sessions < 1:
            raise fail("--rounds and --sessions must be positive", "e.g. --rounds 8 --sessions 3")
        missing = [str(p) for p, _ in specs.values() if not p.is_file()]
        if missing:
            raise fail(f"{', '.join(missing)} does not exist", "export the files first")
        cfg = load_target(args.config, ()).cfg
        images = load_images(cfg, "sample-photos", cfg.bench.num_images, cfg.bench.seed)
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        with tempfile.TemporaryDirectory() as folder:
            files = cut_branches(specs, Path(folder))
            result = ab_time(files, images.inputs.numpy(), sizes, args.rounds, args.threads, args.baseline, pairs,
                             args.sessions, args.turns)
        result["files"] = {name: str(path) + ("" if batch is None else f"@{batch}")
                           for name, (path, batch) in specs.items()}
    except TokenGateError as exc:
        print(f"python -m tools.ab_time: error: {exc}", file=sys.stderr)
        return 2
    for batch, row in result["batches"].items():
        print(f"batch {batch}: " + ", ".join(f"{k} {row['median_ms'][k]:.1f} ms ({row['vs_baseline'][k]:.2f}x)"
                                             for k in files))
        for pair, speedup in row["pairs"].items():
            print(f"  {pair}: {speedup:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

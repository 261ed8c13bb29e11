"""Which export flavor to time on ONNX Runtime: every gated flavor of the tokens and combined models, interleaved
with the dense model in the same rounds, plus each one's TokenSelect share.

    python -m pipeline.bench.flavors configs/deit-s-224.yaml --batch-sizes 1,16 --rounds 6 [--json flavors.json]

This is the measurement behind `run.DEFAULT_FLAVOR` (see the bench note); `tokengate bench --flavor` times one.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


from pipeline.artifacts import write_json
from pipeline.bench.exports import GATED_FLAVORS, cached_export
from pipeline.bench.images import load_images
from pipeline.bench.keep import kept_tokens
from pipeline.bench.metrics import mean_latency
from pipeline.bench.prepare import log, prepare_models
from pipeline.bench.profile import selection_cost
from pipeline.bench.run import default_cache
from pipeline.bench.sessions import OrtCall
from pipeline.bench.target import load_target
from pipeline.bench.timing import batch_at, run_rounds
from pipeline.errors import TokenGateError
from pipeline.export.onnx_export import capped_limits


def compare_flavors(source: str, flavors: Sequence[str], batch_sizes: Sequence[int], rounds: int,
                    models: Sequence[str] = ("tokens", "combined"), images: Optional[int] = None,
                    threads: int = 0, profile_runs: int = 8) -> dict:
    target = load_target(source)
    pool_set = load_images(target.cfg, target.spec.images, images or target.spec.num_images, target.spec.seed)
    built, _ = prepare_models(target, pool_set.inputs)
    cache = default_cache(target)
    calls = {}
    dense_path, _ = cached_export(built["dense"], "dense", "dense", cache, target.cfg)
    calls["dense"] = OrtCall(dense_path, threads=threads)
    for name in models:
        kept = kept_tokens(built[name], pool_set.inputs)
        for flavor in flavors:
            caps = capped_limits(kept, built[name].num_prefix, 1.0)[0] if flavor == "capped" else None
            path, _ = cached_export(built[name], name, flavor, cache, target.cfg, caps=caps)
            calls[f"{name}:{flavor}"] = OrtCall(path, threads=threads)
            log(f"{name}:{flavor} ready", True)
    pool = pool_set.inputs.numpy()
    load = [os.getloadavg()]
    timings = run_rounds(calls, pool, batch_sizes, rounds)
    load.append(os.getloadavg())
    table = {}
    for batch in batch_sizes:
        dense = mean_latency(timings.seconds[("dense", batch)])
        for key, call in calls.items():
            mean = mean_latency(timings.seconds[(key, batch)])
            row = {"latency_ms_mean": 1000 * mean, "speedup_vs_dense": dense / mean}
            if key != "dense":
                shares = selection_cost(call, [batch_at(pool, batch, i) for i in range(profile_runs)],
                                       str(call.path.with_name(f".profile.{batch}")))
                row.update(select_share=shares.select_share, scores_share=shares.scores_share)
            table[f"{key}@{batch}"] = row
    return {"target": str(source), "rounds": rounds, "load": load, "table": table}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.flavors", description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--flavors", default=",".join(GATED_FLAVORS))
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        result = compare_flavors(args.target, [f for f in args.flavors.split(",") if f],
                                 [int(b) for b in args.batch_sizes.split(",")], args.rounds, images=args.images,
                                 threads=args.threads)
    except TokenGateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"load average before/after: {result['load'][0][0]:.2f} / {result['load'][1][0]:.2f}")
    print(f"{'model:flavor@batch':32s} {'mean ms':>10s} {'speedup':>8s} {'select':>8s} {'scores':>8s}")
    for key, row in result["table"].items():
        share = lambda k: f"{100 * row[k]:.2f}%" if k in row else "-"  # noqa: E731
        print(f"{key:32s} {row['latency_ms_mean']:10.2f} {row['speedup_vs_dense']:7.2f}x {share('select_share'):>8s} "
              f"{share('scores_share'):>8s}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tokengate calibrate MODEL_OR_RUN --budget 0.6 [--calib-set DIR] [--out runs/NAME] [--sweep 0.5,0.7 --plot PNG]
[--dropped-tokens context|discard] [--merge-block N | --no-merge | --merge-only] [--no-baseline | --no-merging]"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit token thresholds to a GFLOPs budget without training (writes a run dir)")
    p.add_argument("model", metavar="MODEL_OR_RUN",
                   help="a run directory (its dense teacher is calibrated) or a timm model name with --checkpoint")
    p.add_argument("--budget", type=float, default=0.6, help="mean GFLOPs as a fraction of dense, in (0, 1] (0.6)")
    p.add_argument("--calib-set", default=None,
                   help="calibration set folder (default: calib/sets/fmnist-default, built by make setup)")
    p.add_argument("--out", default=None, help="run directory to write (default: runs/<source>-calib<budget%%>)")
    p.add_argument("--checkpoint", default=None, help="timm model name only: dense weights (.safetensors/.pth)")
    p.add_argument("--config", default=None,
                   help="timm model name only: YAML config for data, geometry and token stages "
                        "(default: configs/fmnist-tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.val_limit=2000 (repeatable)")
    p.add_argument("--sweep", default=None, help="more budgets to calibrate and compare, e.g. 0.5,0.6,0.65,0.7,0.8")
    p.add_argument("--plot", default=None, help="accuracy vs GFLOPs plot (PNG); default OUT/calib.png with --sweep")
    p.add_argument("--dropped-tokens", choices=("context", "discard"), default=None,
                   help="what a pruned token becomes: context (default) stays a frozen key and value of the later "
                        "attentions, which a model trained on every token still reads; discard leaves the network "
                        "(--set gates.dropped_tokens=... works too)")
    p.add_argument("--merge-block", type=int, default=0,
                   help="a merge stage before this block (0: before the first): tokens much like a neighbour are "
                        "averaged into it, its threshold fitted with the others (0)")
    p.add_argument("--no-merge", action="store_true", help="no merge stage: the token stages alone")
    p.add_argument("--merge-only", action="store_true",
                   help="the merge stage alone, no pruning stages: the shortest graph, for small models where ONNX "
                        "Runtime's per-node cost outweighs what a pruning stage saves (docs/results.md); it merges "
                        "at most half the patches, so it cannot reach low budgets")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the baselines (fixed-rate top-k and ToMe-style token merging)")
    p.add_argument("--no-merging", action="store_true", help="skip the ToMe-style token merging baseline only")
    p.add_argument("--grid", type=int, default=6,
                   help="the thresholds' profile grid: 1/GRID steps per stage (6); the fixed-rate baseline measures "
                        "every split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-speed", action="store_true",
                   help="skip timing the calibrated run's model.packed.onnx against its model.dense.onnx")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.artifacts import update_summary
    from pipeline.errors import fail

    from calib.calibrate import calibrate
    from calib.cost import check_budget
    from calib.plot import plot_calibration
    from calib.report import print_calibration
    from calib.sets import load_set
    from calib.source import resolve_source

    check_budget(args.budget)  # before anything is loaded
    if args.no_merge and args.merge_only:
        raise fail("--no-merge and --merge-only leave nothing to calibrate", "pass one of them")
    sweep = _budgets(args.sweep)
    if args.grid < 1 or args.batch_size < 1:
        raise fail("--grid and --batch-size must be positive", "use e.g. --grid 6 --batch-size 256")
    cal = load_set(args.calib_set)
    source = resolve_source(args.model, args.checkpoint, args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{source.name}-calib{round(args.budget * 100)}"
    summary = calibrate(source, args.budget, cal, out, sweep, baseline=not args.no_baseline,
                        merging=not (args.no_baseline or args.no_merging), steps=args.grid,
                        batch_size=args.batch_size, dropped_tokens=_dropped_tokens(args, source.cfg),
                        merge_block=None if args.no_merge else args.merge_block, pruning=not args.merge_only)
    if not args.no_speed:
        summary = update_summary(out, "speed", calibrated_speed(out))
    print_calibration(summary, source.trained)
    plot = Path(args.plot) if args.plot else (out / "calib.png" if sweep else None)
    if plot is not None:
        plot_calibration(summary, source.trained, plot)
        print(f"plot: {plot}")
    print(f"run: {out} (tokengate export {out})")
    return 0


SPEED_BATCHES = (1, 16)


def calibrated_speed(run_dir) -> dict:
    """The calibrated run's shipped ONNX Runtime CPU file (packed) against its dense one, and the merging baseline's
    file where calibration wrote one, interleaved with `tokengate bench`'s code: speedup per batch size, and the
    command for a longer run."""
    from pathlib import Path

    from pipeline.bench.options import BenchOptions
    from pipeline.bench.run import run_bench

    from calib.tome_export import BASELINE_FILE

    baselines = (BASELINE_FILE,) if (Path(run_dir) / BASELINE_FILE).is_file() else ()
    opts = BenchOptions(runtime="ort-cpu", batch_sizes=SPEED_BATCHES, rounds=5, flavors=("packed",), images=64,
                        warmup_s=0.5, top1=False, show=False, baselines=baselines)
    report = run_bench(run_dir, opts)

    def speeds(name: str) -> dict:
        return {key: {str(b): report[key][f"{name}@{b}"] for b in SPEED_BATCHES}
                for key in ("speedup_vs_dense", "speedup_efficiency")}

    out = {"runtime": report["runtime"], "device": report["device"], "flavor": "packed", **speeds("packed"),
           "files": report["files"], "rounds": opts.rounds, "images": opts.images,
           "command": f"tokengate bench {run_dir} --flavors packed --batch-sizes 1,16 --rounds 8"
                      + (f" --baselines {BASELINE_FILE}" if baselines else "")}
    if baselines:
        out["baseline"] = {"file": BASELINE_FILE, **speeds(BASELINE_FILE.removesuffix(".onnx"))}
    return out


def _dropped_tokens(args: argparse.Namespace, cfg) -> str:
    """--dropped-tokens, else a --set gates.dropped_tokens=..., else context (the source run's own training setting
    does not count: a teacher trained on every token is what context serves)."""
    from pipeline.errors import fail

    given = any(o.split("=", 1)[0].strip() == "gates.dropped_tokens" for o in args.overrides)
    if args.dropped_tokens and given and args.dropped_tokens != cfg.gates.dropped_tokens:
        raise fail(f"--dropped-tokens {args.dropped_tokens} contradicts --set gates.dropped_tokens="
                   f"{cfg.gates.dropped_tokens}", "give one of them")
    return args.dropped_tokens or (cfg.gates.dropped_tokens if given else "context")


def _budgets(text: str | None) -> tuple[float, ...]:
    from pipeline.errors import fail

    from calib.cost import check_budget

    if not text:
        return ()
    try:
        budgets = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise fail(f"--sweep {text!r} is not a comma list of numbers", "write e.g. --sweep 0.5,0.6,0.7") from None
    for b in budgets:
        check_budget(b)
    return budgets

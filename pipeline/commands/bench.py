"""tokengate bench RUN_OR_CONFIG [MORE ...] [--runtime R] [--flavors F,..] [--batch-sizes 1,8,32] [--rounds N]
[--sessions K] [--turns batch|pool] [--json F] [--md F] [--plot F]

Times the files a user ships: a run's model.dense.onnx against each of its model.<flavor>.onnx (exported first when
missing). A config first becomes a run directory under --run-root.

With several targets, bench.json holds the first one's report at its top level and the others' reports, in the
same schema, under "other_targets"; bench.md has one section and bench.png one panel per target.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.bench.options import TURNS, BenchOptions
from pipeline.runners.base import RUNTIMES

DEFAULTS = BenchOptions()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the run's exported files against its dense one, interleaved in one run")
    p.add_argument("targets", metavar="RUN_OR_CONFIG", nargs="+",
                   help="a run directory (teacher + student), or a YAML config such as configs/deit-s-224.yaml "
                        "(written as a run directory first: see --run-root); several are benched one after the other")
    sizes = ",".join(map(str, DEFAULTS.batch_sizes))
    p.add_argument("--runtime", default=DEFAULTS.runtime,
                   help=f"one of {', '.join(RUNTIMES)} (onnxruntime = ort-cpu); default {DEFAULTS.runtime}")
    p.add_argument("--batch-sizes", default=sizes, help=f"comma list (default {sizes})")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds,
                   help=f"timed rounds; each runs every model on every batch of the image pool (default "
                        f"{DEFAULTS.rounds})")
    p.add_argument("--sessions", type=int, default=DEFAULTS.sessions,
                   help="runtime sessions per file, taking turns round by round, so that the rounds' spread includes "
                        f"what a session itself moves on a small model (default {DEFAULTS.sessions})")
    p.add_argument("--turns", choices=TURNS, default=DEFAULTS.turns,
                   help="batch: the files take turns batch by batch (a machine that slows down slows them alike); "
                        "pool: each runs a round's batches back to back, as a deployed session does, the first "
                        f"rotating by round (default {DEFAULTS.turns})")
    p.add_argument("--flavors", default=None,
                   help="comma list of the flavors to time against dense (default: every one the runtime runs and "
                        "the run can express; ort-cpu: packed,native,plugin,capped)")
    p.add_argument("--baselines", default=None,
                   help="comma list of baseline files of a run to time beside its flavors, e.g. baseline.tome.onnx "
                        "(written by tokengate calibrate)")
    p.add_argument("--images", type=int, default=None,
                   help="images to calibrate on and time, all of them in every round (default: bench.num_images of a "
                        "config, 256 for a run)")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads, help="intra-op threads (0 = the runtime's default)")
    p.add_argument("--warmup", type=float, default=DEFAULTS.warmup_s,
                   help="seconds of warm-up per model and batch size")
    p.add_argument("--top1-limit", type=int, default=DEFAULTS.top1_limit,
                   help="top-1 on a stratified subset of N images (0 = all)")
    p.add_argument("--run-root", default=str(DEFAULTS.run_root),
                   help=f"where a config becomes a run directory, RUN_ROOT/<config name> (default {DEFAULTS.run_root})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of a CONFIG target, e.g. --set gates.dropped_tokens=context")
    p.add_argument("--selection-share", action="store_true",
                   help="also measure TokenSelect's share of run time (ONNX Runtime; adds minutes)")
    p.add_argument("--json", dest="json_path", default="bench.json", help="report (default bench.json)")
    p.add_argument("--md", dest="md_path", default=None, help="markdown tables (default: next to --json, .md)")
    p.add_argument("--plot", dest="plot_path", default=None, help="PNG (default: next to --json, .png)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.artifacts import write_json, write_text
    from pipeline.bench.plot import plot_bench
    from pipeline.bench.report import markdown
    from pipeline.bench.run import run_bench
    from pipeline.errors import fail

    try:
        sizes = tuple(int(v) for v in args.batch_sizes.split(",") if v.strip())
    except ValueError:
        raise fail(f"--batch-sizes {args.batch_sizes!r} is not a comma list of integers", "e.g. --batch-sizes 1,8,32") \
            from None
    flavors = tuple(f.strip() for f in args.flavors.split(",") if f.strip()) if args.flavors else None
    opts = BenchOptions(runtime=args.runtime, batch_sizes=sizes, rounds=args.rounds, sessions=args.sessions,
                        turns=args.turns,
                        flavors=flavors,
                        run_root=Path(args.run_root), threads=args.threads, warmup_s=args.warmup, images=args.images,
                        top1_limit=args.top1_limit, selection_share=args.selection_share,
                        overrides=tuple(args.overrides), show=not args.quiet,
                        baselines=tuple(b.strip() for b in (args.baselines or "").split(",") if b.strip()))
    reports = []
    for target in args.targets:
        refresh_baselines(Path(target), opts)
        reports.append(run_bench(target, opts))
    json_path = Path(args.json_path)
    md_path = Path(args.md_path) if args.md_path else json_path.with_suffix(".md")
    plot_path = Path(args.plot_path) if args.plot_path else json_path.with_suffix(".png")
    write_json(json_path, dict(reports[0], other_targets=reports[1:]) if len(reports) > 1 else reports[0])
    text = "\n".join(markdown(report) for report in reports)
    write_text(md_path, text)
    plot_bench(reports, plot_path)
    print(text)
    print(f"wrote {json_path}, {md_path}, {plot_path}")
    return 0


def refresh_baselines(target: Path, opts: BenchOptions) -> None:
    """Write a run's ToMe baseline again when another exporter wrote it, as run_bench does for the run's flavors
    (here, since only the CLI layer may import calib/)."""
    from calib.tome_export import BASELINE_FILE, refresh_baseline
    from pipeline.bench.prepare import log

    if BASELINE_FILE in opts.baselines and target.is_dir():
        rewritten = refresh_baseline(target)
        if rewritten is not None:
            log(f"exported {rewritten} again from the merges it records: another exporter wrote it", opts.show)

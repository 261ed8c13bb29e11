"""tokengate validate ARTIFACT [--batch-sizes 1,2,7,32,64] [--runtime R] [--data ROOT] [--limit N] [--json F]
tokengate validate RUN --splits [--batch-sizes 1,2,8,32,64,256] [--json F]

`--splits` prints the batch-size consistency table of a run trained with group gates: top-1 per batch size for each
sub-group split variant it trained (student.split-<mode>.safetensors), and the flip rate against batch 1.

Exit status: 0 when every tolerance holds, 1 when one is broken (the table says which), 2 for a user error.
"""
from __future__ import annotations

import argparse
import logging

from pipeline.runners.base import RUNTIMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="accuracy, batch invariance and PyTorch parity of an artifact per batch size")
    p.add_argument("artifact", help="a run directory (PyTorch student), a model.<flavor>.onnx, or an .engine")
    p.add_argument("--batch-sizes", default=None,
                   help="comma list, e.g. 1,2,7,32,64 (default: the run's validate.batch_sizes; 1 is always run)")
    p.add_argument("--runtime", default=None,
                   help=f"one of {', '.join(RUNTIMES)} (onnxruntime = ort-cpu); default: torch for a run, "
                        "ort-cpu for .onnx, tensorrt for .engine")
    p.add_argument("--data", default=None, help="data root, overriding the one the artifact's config records")
    p.add_argument("--limit", type=int, default=0, help="validate on a stratified subset of N images (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffled batch compositions")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="validate.KEY=VALUE",
                   help="override a tolerance of the recorded config, e.g. --set validate.tol_vs_torch=1e-3")
    p.add_argument("--splits", action="store_true",
                   help="a run with group gates: top-1 per batch size for each sub-group split variant it trained "
                        "(default batch sizes 1,2,8,32,64,256)")
    p.add_argument("--json", dest="json_path", default=None, help="write the report here (atomically)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.artifacts import write_json
    from pipeline.errors import fail
    from pipeline.validate.compare import parse_batch_sizes, validate
    from pipeline.validate.table import print_report

    if args.limit < 0:
        raise fail(f"--limit {args.limit} is negative", "use 0 for the whole split or a positive count")
    sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else None
    if args.splits:
        return _splits(args, sizes)
    show_runtime_log()
    report = validate(args.artifact, sizes, args.runtime, args.data, args.limit, args.seed, overrides=args.overrides)
    print_report(report)
    if args.json_path:
        write_json(args.json_path, report)
    return 0 if report["passed"] else 1


def _splits(args: argparse.Namespace, sizes) -> int:
    from pipeline.artifacts import write_json
    from pipeline.errors import fail
    from pipeline.validate.consistency import CONSISTENCY_BATCH_SIZES, consistency, print_consistency

    if args.runtime not in (None, "torch") or args.overrides:
        raise fail("--splits compares the PyTorch split variants of a run", "drop --runtime and --set with --splits")
    report = consistency(args.artifact, sizes or CONSISTENCY_BATCH_SIZES, args.data, args.limit, args.seed)
    print_consistency(report)
    if args.json_path:
        write_json(args.json_path, report)
    return 0


def show_runtime_log() -> None:
    """Print which execution provider a session got and why others were skipped (pipeline.runtime logs it)."""
    logger = logging.getLogger("pipeline.runtime")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("runtime: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

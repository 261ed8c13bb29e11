"""tokengate train --config configs/NAME.yaml [--set a.b=c ...] --out runs/NAME"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the dense teacher and the gated student (resumes automatically)")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/fmnist-tiny.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.teacher.epochs=3 (repeatable)")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/fmnist-tiny")
    p.add_argument("--subgroup-split", default=None, metavar="MODES",
                   help="dynamic gates: sub-group split modes none|uniform|random|recursive, comma-separated; stage 2 "
                        "is trained once per mode (student.split-MODE.safetensors), so their consistency can be compared")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.report import print_summary
    from pipeline.train.trainer import train

    overrides = list(args.overrides)
    if args.subgroup_split:
        overrides.append(f"gates.subgroup_split=[{args.subgroup_split}]")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, args.out)
    if summary:
        print_summary(summary)
    return 0

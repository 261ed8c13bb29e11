"""tokengate visualize RUN_OR_CONFIG --out tokens.png [--images N] [--run-root DIR]"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="draw the tokens each stage keeps over validation images")
    p.add_argument("target", metavar="RUN_OR_CONFIG",
                   help="a run directory (its student, over Fashion-MNIST / its validation data), or a config such "
                        "as configs/deit-s-224.yaml (thresholds fitted on scikit-image's sample photos)")
    p.add_argument("--out", default="tokens.png", help="PNG to write (default tokens.png)")
    p.add_argument("--images", type=int, default=6, help="rows: one image each (default 6)")
    p.add_argument("--run-root", default="runs/bench",
                   help="for a config: where `tokengate bench` writes (or has written) its run (default runs/bench)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.visualize import visualize

    path = visualize(args.target, args.out, args.images, args.run_root)
    print(f"wrote {path}")
    return 0

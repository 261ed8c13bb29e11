"""tokengate export runs/NAME --flavor plugin|native|capped|packed|dense|all [--opset N] [--quantile Q]"""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from pipeline.flavors import DEPLOY

    deploy = "; ".join(f"{where}: {flavor}" for where, flavor in DEPLOY.items())
    p = sub.add_parser("export", help="export a trained run to ONNX (config, thresholds and caps in metadata)",
                       description=f"Which flavor to deploy where: {deploy}.")
    p.add_argument("run", help="run directory written by `tokengate train`")
    p.add_argument("--flavor", default="all",
                   help="plugin (fused TokenSelect node), native (standard ops), capped (static K per stage), packed "
                        "(packed rows, and a batch-1 graph beside them: ONNX Runtime CPU), dense (teacher), a comma "
                        "list, or all (default: every flavor the run can express; a student without token stages: "
                        "native and dense)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: export.opset of the run, 20)")
    p.add_argument("--quantile", type=float, default=None,
                   help="capped flavor: K per stage = this quantile of kept counts on validation data "
                        "(default: export.capped_quantile of the run, 0.99; 1.0 = the largest count, no truncation)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.export.run_export import export_run

    flavors = None if args.flavor == "all" else tuple(f.strip() for f in args.flavor.split(",") if f.strip())
    for flavor, path in export_run(args.run, flavors, args.opset, args.quantile).items():
        print(f"{flavor:>7}: {path}")
    return 0

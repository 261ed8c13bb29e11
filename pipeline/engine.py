"""`make engine`: the whole chain on one config, with one summary line per stage (done / skipped / failed, and why).

train -> export (every flavor the run can express, and the dense teacher) -> validate (the adaptive flavors on ONNX
Runtime CPU) -> build. A stage that cannot run here (no TensorRT, no GPU)
says so in one line and the chain goes on with what can run.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pipeline.errors import TokenGateError


@dataclass(frozen=True)
class StageResult:
    status: str  # done | skipped | failed
    detail: str


class Skip(Exception):
    """A stage that cannot run on this machine; the message says why and how to enable it."""


Stage = Callable[[argparse.Namespace], str]


def stage_train(args: argparse.Namespace) -> str:
    from pipeline.config import load_config
    from pipeline.report import print_summary
    from pipeline.train.trainer import train

    summary = train(load_config(args.config, args.overrides), args.run)
    print_summary(summary)
    ratios = summary["student_vs_teacher"]
    return (f"teacher {summary['teacher']['top1']:.2f}% / student {summary['student']['top1']:.2f}% top-1, "
            f"student GFLOPs {ratios['gflops_ratio']:.1%} and params {ratios['params_ratio']:.1%} of the teacher's")


def stage_export(args: argparse.Namespace) -> str:
    from pipeline.export.run_export import export_run

    written = export_run(args.run)
    return ", ".join(str(path) for path in written.values())


VALIDATED_FLAVORS = ("packed", "native", "plugin")  # the adaptive ones; capped truncates by design (summary.json)


def stageless(run: Path) -> bool:
    """Whether the run's exported native file holds a student without token stages. Its export writes no plugin,
    capped or packed file then (pipeline.export.onnx_export.expressible_flavors), so the validate and build stages
    take the native file."""
    from pipeline.export.metadata import read_info

    native = run / "model.native.onnx"
    return native.is_file() and not read_info(native).stages


def stage_validate(args: argparse.Namespace) -> str:
    """The adaptive flavors on ONNX Runtime CPU, every batch size, one shared PyTorch reference; a broken tolerance
    fails the stage."""
    from pipeline.artifacts import write_json
    from pipeline.errors import fail
    from pipeline.validate.compare import validate
    from pipeline.validate.table import print_report, summary_line

    lines, failures, references = [], [], {}
    for flavor in ("native",) if stageless(Path(args.run)) else VALIDATED_FLAVORS:
        path = Path(args.run) / f"model.{flavor}.onnx"
        if not path.is_file():
            raise fail(f"{path} is missing, so its flavor cannot be validated",
                       f"export it: tokengate export {args.run}")
        started = time.time()
        report = validate(path, runtime="ort-cpu", references=references)
        report["seconds"] = round(time.time() - started, 1)
        print_report(report)
        write_json(Path(args.run) / f"validate.{flavor}.json", report)
        lines.append(summary_line(report))
        failures += [f"{flavor}: {failure}" for failure in report["failures"]]
    lines += _split_consistency(Path(args.run))
    if failures:
        raise fail("; ".join(failures), f"see the tables above and {args.run}/validate.<flavor>.json")
    return "; ".join(lines)


def _split_consistency(run: Path) -> list[str]:
    """Group gates trained with several sub-group split modes: USDC's batch-size table, also kept in summary.json."""
    from pipeline.artifacts import update_summary
    from pipeline.validate.consistency import consistency, print_consistency, split_variants, summary_line

    if len(split_variants(run)) < 2:
        return []
    report = consistency(run)
    print_consistency(report)
    update_summary(run, "consistency", report)
    return [summary_line(report)]


def stage_build(args: argparse.Namespace) -> str:
    from pipeline.build.stage import stage_build as build

    return build(args)


STAGES: list[tuple[str, Stage]] = [
    ("train", stage_train), ("export", stage_export), ("validate", stage_validate), ("build", stage_build),
]


def run_stages(args: argparse.Namespace, stages: list[tuple[str, Stage]]) -> dict[str, StageResult]:
    results: dict[str, StageResult] = {}
    for name, stage in stages:
        started = time.time()
        print(f"\n=== {name} ===", flush=True)
        try:
            detail = stage(args)
            results[name] = StageResult("done", f"{detail} ({time.time() - started:.0f} s)")
        except Skip as why:
            results[name] = StageResult("skipped", str(why))
        except TokenGateError as exc:
            results[name] = StageResult("failed", str(exc))
            if name in ("train", "export"):
                break  # nothing downstream can run without a trained, exported model
    return results


def print_results(results: dict[str, StageResult]) -> None:
    print("\n=== make engine: summary ===")
    for name, result in results.items():
        print(f"{name:>9}: {result.status}: {result.detail}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist-tiny.yaml")
    parser.add_argument("--run", default=None, help="run directory (default runs/<config name>)")
    parser.add_argument("--target", default="auto", help="GPU target, e.g. sm86; auto = this machine's GPU")
    parser.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    args.run = args.run or str(Path("runs") / Path(args.config).stem)
    results = run_stages(args, STAGES)
    print_results(results)
    return 1 if any(r.status == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

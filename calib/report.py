"""The console table a calibration ends with: calibrated vs fixed-rate vs token merging vs dense, at matched GFLOPs."""
from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console
from rich.table import Table


def print_calibration(summary: dict, trained: Optional[dict] = None) -> None:
    cal = summary["calibration"]
    dense = summary["teacher"]["top1"]
    rows = cal["sweep"] or [cal]
    table = Table(title=f"calibrated thresholds vs fixed-rate top-k vs ToMe-style merging (validation split; "
                        f"calibration set {cal['calib_set']['id']}, {cal['calib_set']['images']} images; "
                        f"dense top-1 {dense:.2f}%; "
                        f"dropped tokens: {cal.get('dropped_tokens', 'discard')}; "
                        f"{_merge(cal.get('merge_block'))})")
    for column in ("budget", "GFLOPs ratio", "top-1 calibrated", "top-1 fixed (min-KL split)", "fixed counts",
                   "top-1 fixed (uniform)", "top-1 merging (min-KL)", "merges per block", "top-1 merging (one r)",
                   "KL cal / fixed / merging", "thresholds"):
        table.add_column(column, justify="right")
    for row in rows:
        fixed, uniform = row.get("fixed"), row.get("fixed_uniform")
        merging, constant = row.get("merging"), row.get("merging_constant")
        kls = [row["calib_kl"]] + [r["calib_kl"] if r else None for r in (fixed, merging)]
        table.add_row(
            f"{row['budget']:g}", f"{row['gflops_ratio']:.3f} (calib {row['calib_gflops_ratio']:.3f})",
            f"{row['top1']:.2f} ({row['top1'] - dense:+.2f})",
            _fixed(fixed), "-" if not fixed else ",".join(str(c) for c in fixed["counts"]), _fixed(uniform),
            _fixed(merging), "-" if not merging else ",".join(str(r) for r in merging["merges"]),
            _fixed(constant) if not constant else f"{_fixed(constant)} (r={max(constant['merges'])})",
            " / ".join("-" if k is None else f"{k:.3f}" for k in kls),
            ", ".join(f"{t:.3f}" for t in row["thresholds"]))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # logs keep the columns readable
    console.print(table)
    speed = summary.get("speed")
    if speed:
        ratios = ", ".join(f"{s:.2f}x at batch {b} (efficiency {speed['speedup_efficiency'][b]:.2f})"
                           for b, s in speed["speedup_vs_dense"].items())
        console.print(f"speed of the calibrated model ({speed['flavor']} flavor vs dense, {speed['device']}, "
                      f"{speed['rounds']} rounds over {speed['images']} images): {ratios}; `{speed['command']}` "
                      "times it longer")
        baseline = speed.get("baseline")
        if baseline:
            theirs = ", ".join(f"{s:.2f}x at batch {b}" for b, s in baseline["speedup_vs_dense"].items())
            console.print(f"the merging baseline's file ({baseline['file']}), in the same run: {theirs}")
    if trained:
        console.print(f"trained student of the source run: {trained['student']['top1']:.2f}% at "
                      f"{trained['student_vs_teacher']['gflops_ratio']:.3f} of dense GFLOPs")


def _merge(block: Optional[int]) -> str:
    return "no merge stage" if block is None else f"calibrated = merge stage before block {block} + token thresholds"


def _fixed(row: Optional[dict]) -> str:
    if not row or "top1" not in row:
        return "-"
    return f"{row['top1']:.2f} @ {row['gflops_ratio']:.3f}"

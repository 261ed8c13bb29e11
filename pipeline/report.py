"""Console tables for the numbers people read at the end of a stage."""
from __future__ import annotations

from typing import Mapping

from rich.console import Console
from rich.table import Table


def print_summary(summary: Mapping) -> None:
    """Teacher vs student: top-1, GFLOPs, parameters, and the ratios the targets are stated in."""
    table = Table(title="teacher vs student (validation split, student in hard-drop mode)")
    for column in ("model", "top-1 %", "GFLOPs", "params", "kept tokens per stage"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name in ("teacher", "student"):
        row = summary.get(name)
        if row:
            kept = ", ".join(f"{k:.1f}" for k in row.get("mean_kept_tokens", [])) or "all"
            table.add_row(name, f"{row['top1']:.2f}", f"{row['gflops']:.5f}", f"{row['params']:,}", kept)
    console = Console()
    console.print(table)
    ratios = summary.get("student_vs_teacher")
    if ratios:
        console.print(f"student/teacher: GFLOPs {ratios['gflops_ratio']:.3f}, params {ratios['params_ratio']:.3f}, "
                      f"top-1 drop {ratios['top1_drop']:+.2f} points")

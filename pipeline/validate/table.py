"""The validation report as a rich table, with broken tolerances in red and the verdict underneath."""
from __future__ import annotations

import sys
from typing import Optional

from rich.console import Console
from rich.table import Table


def print_report(report: dict, console: Optional[Console] = None) -> None:
    console = console or (Console() if sys.stdout.isatty() else Console(width=120))  # logs: no wrapped headers
    tol, invariant = report["tolerances"], report["batch_invariant"]
    table = Table(title=f"{report['artifact']} on {report['runtime']} ({report['flavor']}): {report['images']} "
                        f"validation images in shuffled batches, reference: {report['reference']}")
    for column in ("batch", "top-1 %", "max|Δ| vs b1", "flips vs b1", "max|Δ| vs torch", "mean kept tokens/stage"):
        table.add_column(column, justify="right")
    for size, r in report["results"].items():
        kept = ", ".join(f"{k:.2f}" for k in r["mean_kept_tokens"]) or "all (dense)"
        table.add_row(size, f"{r['top1']:.2f}",
                      _mark(r["max_abs_logit_diff_vs_b1"], tol["vs_b1"] if invariant else None, "{:.2e}"),
                      _mark(r["flips_vs_b1"], tol["max_flips"] if invariant else None, "{}"),
                      _mark(r["max_abs_diff_vs_torch"], tol["vs_torch"], "{:.2e}"), kept)
    console.print(table)
    if report.get("requested", report["artifact"]) != report["artifact"]:
        console.print(f"[yellow]{report['requested']} was asked for; {report['runtime']} opened and validated "
                      f"{report['artifact']} instead (pipeline/runtime.py says why)[/]")
    if report["excluded_samples"]:
        ids = ", ".join(s["id"] for s in report["excluded_samples"][:10])
        console.print(f"[yellow]excluded {len(report['excluded_samples'])} images with NaN/Inf inputs: {ids}[/]")
    if not invariant:
        console.print(f"group-level dynamic gates decide per batch, so batch invariance is not promised: top-1 "
                      f"spread across batch sizes {report['top1_spread']:.2f} points")
    for failure in report["failures"]:
        console.print(f"[bold red]FAIL[/] {failure}")
    if report["passed"]:
        console.print(f"[bold green]PASS[/] tolerances: vs torch {tol['vs_torch']:g}"
                      + (f", vs batch 1 {tol['vs_b1']:g}, flips {tol['max_flips']}" if invariant else ""))


def _mark(value, limit, fmt: str) -> str:
    if value is None:
        return "[red]non-finite[/]"
    text = fmt.format(value)
    return f"[red]{text}[/]" if limit is not None and value > limit else text


def summary_line(report: dict) -> str:
    """One line for `make engine`'s stage summary: top-1 at batch 1 and the worst deviations over batch sizes."""
    results = report["results"].values()
    worst = {key: max((r[key] for r in results), key=lambda v: float("inf") if v is None else v)
             for key in ("max_abs_diff_vs_torch", "max_abs_logit_diff_vs_b1", "flips_vs_b1")}
    fmt = lambda v: "non-finite" if v is None else f"{v:.1e}"  # noqa: E731
    return (f"{report['flavor']}: top-1 {report['results']['1']['top1']:.2f}%, max|Δ| vs torch "
            f"{fmt(worst['max_abs_diff_vs_torch'])}, vs b1 {fmt(worst['max_abs_logit_diff_vs_b1'])}, "
            f"{worst['flips_vs_b1']} flips (batches {','.join(report['results'])})"
            + ("" if report["passed"] else ", FAILED"))

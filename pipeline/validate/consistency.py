"""The batch-size consistency report of USDC's own table: top-1 per inference batch size, per sub-group split variant.

Group-level dynamic gates decide once per batch, so a student's accuracy can move with the batch size. Stage 2 of
`tokengate train` saves one student per `gates.subgroup_split` mode (student.split-<mode>.safetensors); this runs
each through the comparator at the same shuffled compositions and sets them side by side, with the flip rate of
predictions against batch 1.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from pipeline.config import load_run_config
from pipeline.errors import fail

CONSISTENCY_BATCH_SIZES = (1, 2, 8, 32, 64, 256)
VARIANT_PREFIX, VARIANT_SUFFIX = "student.split-", ".safetensors"


def split_variants(run_dir: str | Path) -> dict[str, Path]:
    """{split mode: checkpoint} for the variants a run trained, in the config's order (the main one first)."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise fail(f"{run} is not a run directory (no config.json)", "pass runs/NAME written by `tokengate train`")
    modes = load_run_config(run).gates.subgroup_split
    return {mode: run / f"{VARIANT_PREFIX}{mode}{VARIANT_SUFFIX}" for mode in modes
            if (run / f"{VARIANT_PREFIX}{mode}{VARIANT_SUFFIX}").is_file()}


def consistency(run_dir: str | Path, batch_sizes: Sequence[int] = CONSISTENCY_BATCH_SIZES,
                data_root: Optional[str] = None, limit: int = 0, seed: int = 0) -> dict:
    """Top-1 and flip rate vs batch 1 at every batch size, for every split variant of the run (PyTorch, CPU)."""
    from pipeline.validate.compare import validate

    variants = split_variants(run_dir)
    if not variants:
        raise fail(f"{run_dir} has no sub-group split variants ({VARIANT_PREFIX}<mode>{VARIANT_SUFFIX})",
                   "train with --set gates.dynamic=group --subgroup-split recursive,none")
    rows, images = {}, 0
    for mode, path in variants.items():
        report = validate(path, batch_sizes, "torch", data_root, limit, seed)
        images = report["images"]
        rows[mode] = {
            "checkpoint": str(path),
            "top1": {size: r["top1"] for size, r in report["results"].items()},
            "flip_rate_vs_b1": {size: r["flips_vs_b1"] / max(images, 1) for size, r in report["results"].items()},
            "top1_spread": report["top1_spread"],
        }
    return {"run": str(run_dir), "images": images, "batch_sizes": sorted(set(batch_sizes) | {1}), "variants": rows}


def print_consistency(report: dict, console: Optional[Console] = None) -> None:
    console = console or (Console() if sys.stdout.isatty() else Console(width=140))
    sizes = [str(b) for b in report["batch_sizes"]]
    table = Table(title=f"top-1 % by inference batch size, per sub-group split variant ({report['images']} "
                        f"validation images, shuffled batches)")
    table.add_column("--subgroup-split")
    for size in sizes:
        table.add_column(f"B={size}", justify="right")
    table.add_column("spread (pt)", justify="right")
    table.add_column("max flip rate vs b1", justify="right")
    for mode, row in report["variants"].items():
        table.add_row(mode, *(f"{row['top1'][s]:.2f}" for s in sizes), f"{row['top1_spread']:.2f}",
                      f"{max(row['flip_rate_vs_b1'].values()):.2%}")
    console.print(table)


def summary_line(report: dict) -> str:
    return "; ".join(f"split {mode}: top-1 spread {row['top1_spread']:.2f} pt over batch sizes "
                     f"{','.join(str(b) for b in report['batch_sizes'])}" for mode, row in report["variants"].items())

"""bench.png: throughput against top-1 (or GFLOPs without trained weights), one point per file and batch size."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.artifacts import save_png

COLORS = {"dense": "#444444", "packed": "#d62728", "native": "#1f77b4", "plugin": "#2ca02c", "capped": "#ff7f0e",
          "student": "#d62728"}
MARKERS = "osD^v<>ph*"


def plot_bench(reports: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per bench target, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(7.5 * len(reports), 5.0), dpi=120, squeeze=False)
    for ax, report in zip(axes[0], reports):
        _panel(ax, report)
    fig.tight_layout()
    return save_png(fig, path)


def _panel(ax: Any, report: Mapping[str, Any]) -> None:
    rows = report["rows"]
    by_top1 = all(r["top1"] is not None for r in rows)
    batches = list(report["batch_sizes"])
    for row in rows:
        x = row["top1"] if by_top1 else row["gflops_per_image"]
        ax.scatter(x, row["throughput_img_s"], color=COLORS.get(row["model"], "black"),
                   marker=MARKERS[batches.index(row["batch"]) % len(MARKERS)], s=55, zorder=3)
        ax.annotate(f"{row['model']}@{row['batch']}", (x, row["throughput_img_s"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for batch in batches if not by_top1 else ():  # GFLOPs axis: join each batch size's models
        pts = sorted(((r["top1"] if by_top1 else r["gflops_per_image"], r["throughput_img_s"]) for r in rows
                      if r["batch"] == batch))
        ax.plot(*zip(*pts), color="#bbbbbb", linewidth=0.8, zorder=1)
    ax.set_yscale("log")
    ax.set_ylabel("throughput (images/s, log scale)")
    ax.set_xlabel("top-1 (%)" if by_top1 else "GFLOPs per image (MAC convention)")
    ax.grid(alpha=0.3)
    caption = (f"{report['target']}: {report['runtime']}, the run's exported files; color = flavor, "
               f"marker = batch size ({', '.join(map(str, batches))})")
    if not by_top1:
        caption += "\nuntrained weights: no accuracy, so throughput is plotted against GFLOPs instead of top-1"
    ax.set_title(caption, fontsize=8)

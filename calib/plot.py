"""calib.png: accuracy vs GFLOPs for calibrated thresholds, the fixed-rate and token-merging baselines, dense and the
trained student."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.artifacts import save_png


def plot_calibration(summary: dict, trained: Optional[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = summary["calibration"]
    rows = sorted(cal["sweep"] or [cal], key=lambda r: r["gflops_ratio"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot([r["gflops_ratio"] for r in rows], [r["top1"] for r in rows], "o-",
            label="calibrated (no training)" if cal.get("merge_block") is None else
            f"calibrated: merge stage before block {cal['merge_block']} + thresholds (no training)")
    for key, style, label in (("fixed", "s--", "fixed-rate top-k, min-KL split"),
                              ("fixed_uniform", "^:", "fixed-rate top-k, one rate (EViT)"),
                              ("merging", "v-.", "ToMe-style merging, min-KL counts per block"),
                              ("merging_constant", "x:", "ToMe-style merging, one count (as published)")):
        points = [r[key] for r in rows if r.get(key) and "top1" in r[key]]
        if points:
            points.sort(key=lambda p: p["gflops_ratio"])
            ax.plot([p["gflops_ratio"] for p in points], [p["top1"] for p in points], style, label=label)
    ax.plot([1.0], [summary["teacher"]["top1"]], "k*", markersize=12, label="dense teacher")
    if trained:
        ax.plot([trained["student_vs_teacher"]["gflops_ratio"]], [trained["student"]["top1"]], "rD", markersize=8,
                label="trained student")
    ax.set_xlabel("GFLOPs / dense GFLOPs (validation mean)")
    ax.set_ylabel("top-1 % (validation)")
    mode = cal.get("dropped_tokens", "discard")  # summaries from before the option discarded
    ax.set_title(f"Token thresholds without training ({cal['calib_set']['id']}; dropped tokens: {mode})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_png(fig, path)

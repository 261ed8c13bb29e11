"""bench.json (the issue's schema plus extra keys) and bench.md (one table per batch size)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from pipeline.bench.metrics import percentile, speedups
from pipeline.bench.timing import Timings

SCHEMA_KEYS = ("model", "batch", "gflops_per_image", "throughput_img_s", "latency_ms_p50", "latency_ms_p90", "top1")


def rows_and_speedups(timings: Timings, models: Sequence[str], batch_sizes: Sequence[int], gflops: Mapping[str, float],
                      top1: Mapping[str, Optional[float]]) -> tuple[list[dict], dict, dict]:
    """The `rows`, `speedup_vs_dense` and `speedup_efficiency` of bench.json."""
    rows, speed, eff = [], {}, {}
    for batch in batch_sizes:
        p50 = {m: percentile(timings.latencies[(m, batch)], 50) for m in models}
        for m in models:
            rows.append({"model": m, "batch": batch, "gflops_per_image": gflops[m],
                         "throughput_img_s": batch / p50[m], "latency_ms_p50": 1000 * p50[m],
                         "latency_ms_p90": 1000 * percentile(timings.latencies[(m, batch)], 90), "top1": top1.get(m)})
        s, e = speedups(p50, gflops, "dense", str(batch))
        speed.update(s)
        eff.update(e)
    return rows, speed, eff


def round_speedups(timings: Timings, models: Sequence[str], batch_sizes: Sequence[int]) -> dict[str, list[float]]:
    """Per model@batch, [min, median, max] over rounds of dense's round median / the model's round median."""
    out = {}
    for batch in batch_sizes:
        dense = timings.round_medians[("dense", batch)]
        for m in models:
            ratios = [d / t for d, t in zip(dense, timings.round_medians[(m, batch)])]
            out[f"{m}@{batch}"] = [min(ratios), percentile(ratios, 50), max(ratios)]
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """Tables for people: one per batch size, then how the models were made and where the time goes."""
    lines = [f"# tokengate bench: {report['target']}", "",
             f"Runtime **{report['runtime']}** ({report['flavor']} flavor) on {report['device']}. "
             f"{report['rounds']} interleaved rounds, median (p50) and p90 of every timed batch; "
             f"machine load average {report['machine']['load_before'][0]:.2f} before, "
             f"{report['machine']['load_after'][0]:.2f} after ({report['machine']['cpus']} CPUs).", ""]
    waste = report.get("padding_waste", {})
    share = report.get("tokenselect_share", {})
    for batch in report["batch_sizes"]:
        lines += [f"## batch {batch}", "",
                  "| model | GFLOPs/img | img/s | p50 ms | p90 ms | speedup | FLOPs ratio | efficiency | top-1 | "
                  "padding waste | TokenSelect |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        dense_gflops = next(r["gflops_per_image"] for r in report["rows"] if r["model"] == "dense")
        for row in (r for r in report["rows"] if r["batch"] == batch):
            key = f"{row['model']}@{batch}"
            top1 = "n/a" if row["top1"] is None else f"{row['top1']:.2f}"
            w = waste.get(key)
            lines.append(
                f"| {row['model']} | {row['gflops_per_image']:.3f} | {row['throughput_img_s']:.1f} | "
                f"{row['latency_ms_p50']:.2f} | {row['latency_ms_p90']:.2f} | {report['speedup_vs_dense'][key]:.2f}x | "
                f"{dense_gflops / row['gflops_per_image']:.2f}x | {report['speedup_efficiency'][key]:.2f} | {top1} | "
                f"{'-' if w is None else f'{100 * w:.1f}%'} | "
                f"{'-' if key not in share else f'{100 * share[key]:.2f}%'} |")
        lines.append("")
    lines += ["## models", ""]
    for name, about in report["models"].items():
        lines.append(f"- **{name}**: {about['how']}" + (
            f"; keep ratios {', '.join(f'{r:.3f}' for r in about['keep_ratios'])}" if about.get("keep_ratios") else ""))
    lines += ["", f"Images: {report['images']}. Top-1: {report['top1_source']}.", "",
              "speedup = dense p50 latency / model p50 latency at the same batch; FLOPs ratio = dense GFLOPs / model "
              "GFLOPs; efficiency = speedup / FLOPs ratio. Padding waste = (max - mean) / max of kept tokens per "
              "batch, averaged over stages and batches (a padded layout pays it in every layer; the packed layout "
              "only in the attention of the layers that score a stage). TokenSelect = share of run time in the "
              "selection nodes: "
              "each stage's selection cut out of the graph ONNX Runtime runs and timed on its own, unprofiled, "
              "alternating with the whole model (ORT's profiler adds its own bookkeeping to every node's time and "
              f"overstates regions of small nodes; its figures are in bench.json). Regions: "
              f"{report.get('profile_method', 'n/a')}.", ""]
    return "\n".join(lines)

"""bench.json (rows, speedups, efficiencies, parity, the timed files and their sha256) and bench.md (one table per
batch size)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from pipeline.bench.metrics import mean_latency, percentile, speedups
from pipeline.bench.timing import Timings

TURN_WORDS = {"batch": "batch by batch", "pool": "a whole pool each (its batches back to back)"}


def rows_and_speedups(timings: Timings, models: Sequence[str], batch_sizes: Sequence[int],
                      gflops: Mapping[tuple[str, int], float],
                      top1: Mapping[str, Optional[float]]) -> tuple[list[dict], dict, dict]:
    """The `rows`, `speedup_vs_dense` and `speedup_efficiency` of bench.json.

    Throughput and speedup follow `mean_latency` (per batch the median over rounds, then the mean over the same
    batches for every model); p50 and p90 are percentiles of every timed call (content and noise together).

    Args:
        gflops: per (model, batch size), the mean over the images timed at that batch size.
    """
    rows, speed, eff = [], {}, {}
    for batch in batch_sizes:
        mean = {m: mean_latency(timings.seconds[(m, batch)]) for m in models}
        for m in models:
            every = timings.seconds[(m, batch)].ravel()
            rows.append({"model": m, "batch": batch, "gflops_per_image": gflops[(m, batch)],
                         "throughput_img_s": batch / mean[m], "latency_ms_p50": 1000 * percentile(every, 50),
                         "latency_ms_p90": 1000 * percentile(every, 90), "top1": top1.get(m),
                         "latency_ms_mean": 1000 * mean[m]})
        s, e = speedups(mean, {m: gflops[(m, batch)] for m in models}, "dense", str(batch))
        speed.update(s)
        eff.update(e)
    return rows, speed, eff


def round_speedups(timings: Timings, models: Sequence[str], batch_sizes: Sequence[int]) -> dict[str, list[float]]:
    """Per model@batch, [min, median, max] over rounds of the round's speedup: dense's time over the round's
    batches / the model's time over the same batches."""
    out = {}
    for batch in batch_sizes:
        dense = timings.seconds[("dense", batch)].sum(axis=1)
        for m in models:
            ratios = list(dense / timings.seconds[(m, batch)].sum(axis=1))
            out[f"{m}@{batch}"] = [min(ratios), percentile(ratios, 50), max(ratios)]
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """Tables for people: one per batch size, then the files timed, which flavor to deploy where, and the method."""
    lines = [f"# tokengate bench: {report['target']}", "",
             f"Runtime **{report['runtime']}** on {report['device']}: the files of {report['run_dir']}. "
             f"{report['rounds']} interleaved rounds over {report.get('sessions', 1)} session(s) per file taking "
             f"turns {TURN_WORDS[report.get('turns', 'batch')]}, each round over the same batches (the image pool: "
             f"{', '.join(f'{n} of {b}' for b, n in report['batches_per_round'].items())}); "
             f"machine load average {report['machine']['load_before'][0]:.2f} before, "
             f"{report['machine']['load_after'][0]:.2f} after ({report['machine']['cpus']} CPUs).", ""]
    waste = report.get("padding_waste", {})
    share = report.get("tokenselect_share", {})
    for batch in report["batch_sizes"]:
        lines += [f"## batch {batch}", "",
                  "| model | GFLOPs/img | img/s | mean ms | p50 ms | p90 ms | speedup | FLOPs ratio | efficiency | "
                  "top-1 | padding waste | TokenSelect |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [r for r in report["rows"] if r["batch"] == batch]
        dense_gflops = next(r["gflops_per_image"] for r in rows if r["model"] == "dense")
        for row in rows:
            key = f"{row['model']}@{batch}"
            top1 = "n/a" if row["top1"] is None else f"{row['top1']:.2f}"
            w = waste.get(key)
            lines.append(
                f"| {row['model']} | {row['gflops_per_image']:.3f} | {row['throughput_img_s']:.1f} | "
                f"{row['latency_ms_mean']:.2f} | {row['latency_ms_p50']:.2f} | {row['latency_ms_p90']:.2f} | "
                f"{report['speedup_vs_dense'][key]:.2f}x | "
                f"{dense_gflops / row['gflops_per_image']:.2f}x | {report['speedup_efficiency'][key]:.2f} | {top1} | "
                f"{'-' if w is None else f'{100 * w:.1f}%'} | "
                f"{'-' if key not in share else f'{100 * share[key]:.2f}%'} |")
        lines.append("")
    lines += ["## files", ""]
    lines += [f"- **{name}**: `{f['path']}` (sha256 {f['sha256'][:16]})" for name, f in report["files"].items()]
    lines += ["", "Deploy: " + "; ".join(f"{where}: {flavor}" for where, flavor in report["deploy"].items()) + "."]
    lines += ["", f"Images: {report['images']}. Top-1: {report['top1_source']}.", "",
              "mean ms = each batch's median over the rounds, averaged over the batches; img/s = batch / mean ms. "
              "speedup = dense mean ms / model mean ms (the same images; a token-gated model's median batch is "
              "cheaper than its mean one, so p50 would flatter it); p50 and p90 are over every timed call. "
              "GFLOPs/img = mean over the timed images; FLOPs ratio = dense GFLOPs / model "
              "GFLOPs; efficiency = speedup / FLOPs ratio. Padding waste = (max - mean) / max of kept tokens per "
              "batch, averaged over stages and batches (a padded layout pays it in every layer; the packed layout "
              "only in the attention of the layers that score a stage). TokenSelect (with --selection-share) = "
              "share of run time in the selection nodes: each stage's selection cut out of the graph ONNX Runtime "
              "runs and timed on its own, unprofiled, alternating with the whole model. Regions: "
              f"{report.get('profile_method', 'n/a')}.", ""]
    return "\n".join(lines)

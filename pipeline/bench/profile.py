"""TokenSelect's share of run time, from ONNX Runtime's profiler.

The regions are the ones the exporter recorded (`ExportInfo.selection`, pipeline.export.selection): `select` (the
decisions, compaction, kept counts and masks; the fused TokenSelect nodes of plugin flavors) and `scores` (the
class-attention row, head importance and normalisation). The graph timed is the one ORT runs (its optimized model,
saved by the profiling session): ORT keeps the names of the nodes it does not fuse, and `matched` says how much
kernel time the analysed graph's node names cover.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx

from pipeline.bench.region_time import RegionTimes, time_regions
from pipeline.errors import fail
from pipeline.export.metadata import ExportInfo
from pipeline.runners.ort_runner import OrtRunner


@dataclass
class Regions:
    """Node names per category, and how they were found."""

    select: set[str] = field(default_factory=set)
    scores: set[str] = field(default_factory=set)
    method: str = ""
    stages: int = 0


def recorded_regions(selection: dict[str, list[str]], stages: int, graph: onnx.ModelProto) -> Regions:
    """The recorded regions, restricted to the nodes of `graph` (ORT's optimized graph drops folded nodes)."""
    names = {n.name for n in graph.graph.node}
    return Regions(select=set(selection.get("select", ())) & names, scores=set(selection.get("scores", ())) & names,
                   method="nodes recorded by the exporter (tokengate.selection)", stages=stages)


@dataclass
class ProfileShares:
    select_share: float  # TokenSelect kernel time / model run time (median over the profiled runs)
    scores_share: float
    matched: float  # share of kernel time on node names found in the exported graph
    run_ms: float  # median model run time while profiling
    top_ops: list[tuple[str, float]]  # op type -> share of kernel time
    method: str
    stages: int
    runs: int  # profiled runs the medians are over

    def to_dict(self) -> dict:
        return {"select_share": self.select_share, "scores_share": self.scores_share, "matched": self.matched,
                "run_ms": self.run_ms, "top_ops": [[op, share] for op, share in self.top_ops], "method": self.method,
                "stages_found": self.stages, "runs": self.runs}


def parse_profile(events: list[dict], regions: Regions, graph_names: set[str], skip_runs: int = 1) -> ProfileShares:
    """Shares of kernel time per category over the model runs after the first `skip_runs` (warm-up).

    Each run's share is its own selection (scores) kernel time over its own run time, and the shares are the medians
    over runs: on a shared machine one run slowed by another process would otherwise weigh as much as all others."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    if not runs:
        raise ValueError("the profile holds no model run after the warm-up")
    starts = [float(r["ts"]) for r in runs]
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
               and e["ts"] >= starts[0]]
    total = float(sum(e["dur"] for e in kernels)) or 1.0
    select, scores = np.zeros(len(runs)), np.zeros(len(runs))
    matched = 0.0
    ops: Counter = Counter()
    for e in kernels:
        name = e["name"][: -len("_kernel_time")]
        run = int(np.searchsorted(starts, float(e["ts"]), side="right")) - 1  # the run the kernel started in
        ops[e.get("args", {}).get("op_name", "?")] += e["dur"]
        matched += e["dur"] if name in graph_names else 0.0
        select[run] += e["dur"] if name in regions.select else 0.0
        scores[run] += e["dur"] if name in regions.scores else 0.0
    run_time = np.array([float(r["dur"]) for r in runs])
    return ProfileShares(select_share=float(np.median(select / run_time)),
                         scores_share=float(np.median(scores / run_time)), matched=matched / total,
                         run_ms=float(np.median(run_time)) / 1000.0,
                         top_ops=[(op, d / total) for op, d in ops.most_common(8)], method=regions.method,
                         stages=regions.stages, runs=len(runs))


@dataclass
class SelectionCost:
    """TokenSelect's and the scores' share of run time: timed unprofiled on the CPU provider (`region_time`), else
    as ORT's profiler attributes kernel time (which overstates regions of small nodes; kept for its breakdown)."""

    select_share: float
    scores_share: float
    timed: Optional[RegionTimes]  # None where regions are not timed on their own (GPU providers)
    profiled: ProfileShares

    def to_dict(self) -> dict:
        profiler = {k: v for k, v in self.profiled.to_dict().items() if k not in ("method", "stages_found")}
        out = {"select_share": self.select_share, "scores_share": self.scores_share, "method": self.profiled.method,
               "stages_found": self.profiled.stages, "profiler": profiler}
        if self.timed is None:
            return {**out, "run_ms": self.profiled.run_ms, "timing": "ORT profiler kernel time (regions are timed on "
                    "their own on the CPU provider only)"}
        return {**out, "select_ms": self.timed.region_s["select"] * 1000,
                "scores_ms": self.timed.region_s["scores"] * 1000, "run_ms": self.timed.model_s * 1000,
                "timed_batches": self.timed.batches, "reps": self.timed.reps,
                "timing": "each region cut out of ORT's optimized graph and timed on its own, unprofiled, "
                          "alternating with the whole model (pipeline/bench/region_time.py)"}


def selection_cost(call: OrtRunner, batches: Sequence[np.ndarray], prefix: str, reps: int = 3) -> SelectionCost:
    """TokenSelect's share of `call`'s run time on `batches`.

    A profiling session (ORT's optimized graph saved beside `prefix`) runs the first batch as a warm-up and then every
    batch; its graph names the regions and its profile gives the kernel-time breakdown. On the CPU provider the
    shares reported are then measured without the profiler: each region cut out of that graph and timed alternating
    with `call`. Different batches keep different token counts, so they are what the share should be an average
    case of."""
    profiled = OrtRunner(call.path, call.runtime, threads=call.threads, spin=False, profile_prefix=prefix,
                         ours=call.info is not None)
    for images in [batches[0], *batches]:
        profiled.infer(images)
    trace = Path(profiled.end_profiling())
    saved = profiled.optimized is not None and profiled.optimized.is_file()
    try:
        events = json.loads(trace.read_text())
        model = onnx.load(str(profiled.optimized if saved else call.path))
    finally:
        trace.unlink(missing_ok=True)
        if profiled.optimized is not None:
            profiled.optimized.unlink(missing_ok=True)
    del profiled
    info: Optional[ExportInfo] = call.info
    if info is None or not info.selection:
        raise fail(f"{call.path.name} records no selection nodes, so TokenSelect's share cannot be attributed",
                   "re-export it with this version (tokengate export RUN)")
    regions = recorded_regions(info.selection, len(info.stages), model)
    shares = parse_profile(events, regions, {n.name for n in model.graph.node})
    if call.runtime != "ort-cpu":
        return SelectionCost(shares.select_share, shares.scores_share, None, shares)
    if not saved:
        raise fail(f"ONNX Runtime did not save the optimized graph of {call.path.name}, so its regions cannot be "
                   "timed as it runs them", f"check that {Path(prefix).parent} is writable")
    timed = time_regions(model, {"select": regions.select, "scores": regions.scores}, call, batches, reps)
    return SelectionCost(timed.shares["select"], timed.shares["scores"], timed, shares)

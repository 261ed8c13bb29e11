"""TokenSelect's share of run time, from ONNX Runtime's profiler.

Attribution works on the exported graph (ORT keeps node names in its per-node `*_kernel_time` events):
- plugin flavors: the fused `tokengate::TokenSelect` nodes are the selection;
- standard-op flavors: for each stage, the scores tensor S (the non-constant input of the one `score > threshold`
  comparison per stage that no other such comparison feeds) anchors the region. Its selection is every node
  computed from S before any block compute (matrix product, LayerNorm) uses it: the keep mask, the compaction, the
  kept counts and the padding mask or packed layout built from them; plus the copies feeding it (Slice, Gather,
  Concat, ...) that do not also feed the scores;
- scores (both): the nodes that compute S and nothing else (class-attention row, head importance, normalisation).
The graph analysed is the one ORT runs (its optimized model, saved by the profiling session), so fused nodes are
named as in the profile; `matched` says how much kernel time the analysed graph's node names cover.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx

from pipeline.bench.region_time import RegionTimes, time_regions
from pipeline.contract import DOMAIN as CUSTOM_DOMAIN
from pipeline.errors import fail
from pipeline.export.graph import constant_names, node_reads
from pipeline.runners.ort_runner import OrtRunner

GLUE_OPS = frozenset({"Slice", "Shape", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Gather", "Concat", "Range",
                      "Constant", "ConstantOfShape", "Cast", "Transpose", "Identity"})
NORM_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                      "SkipSimplifiedLayerNormalization"})
BLOCK_OPS = frozenset({"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Einsum"}) | NORM_OPS


@dataclass
class Graph:
    """Producers and consumers of an ONNX graph's tensors, nodes by index (topological order). A node reads what
    `node_reads` says: a Loop's body reads outer tensors it does not list as inputs."""

    nodes: list[onnx.NodeProto]
    reads: list[list[str]]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    constants: set[str]

    @staticmethod
    def of(model: onnx.ModelProto) -> "Graph":
        nodes = list(model.graph.node)
        reads = [node_reads(n) for n in nodes]
        producer, consumers = {}, {}
        for i, node in enumerate(nodes):
            for name in node.output:
                producer[name] = i
            for name in reads[i]:
                consumers.setdefault(name, []).append(i)
        return Graph(nodes, reads, producer, consumers, constant_names(model))

    def ancestors(self, tensors: Iterable[str]) -> set[int]:
        seen, stack = set(), [self.producer[t] for t in tensors if t in self.producer]
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack += [self.producer[t] for t in self.reads[i] if t in self.producer]
        return seen

    def descendants(self, tensors: Iterable[str]) -> set[int]:
        seen, stack = set(), [c for t in tensors for c in self.consumers.get(t, [])]
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack += [c for t in self.nodes[i].output for c in self.consumers.get(t, [])]
        return seen


@dataclass
class Regions:
    """Node names per category, and how they were found."""

    select: set[str] = field(default_factory=set)
    scores: set[str] = field(default_factory=set)
    method: str = ""
    stages: int = 0


def score_tensors(graph: Graph) -> list[str]:
    """Per stage, the scores tensor S of `S > threshold` (threshold constant-folded by the exporter)."""
    candidates = []
    for node in graph.nodes:
        if node.op_type != "Greater" or len(node.input) != 2:
            continue
        a, b = node.input
        if (a in graph.constants) != (b in graph.constants):
            candidates.append(b if a in graph.constants else a)
    candidates = list(dict.fromkeys(candidates))
    # nan_to_num / isposinf inside the min_keep ranking (and the capped flavor's re-ranking) compare copies of S: drop
    # candidates that another one feeds with no block compute (matrix product, LayerNorm) in between. The next
    # stage's scores always have one.
    copies = set()
    for o in candidates:
        downstream = graph.descendants([o])
        after_block = graph.descendants([t for i in downstream if graph.nodes[i].op_type in BLOCK_OPS
                                         for t in graph.nodes[i].output])
        copies |= {c for c in candidates if c != o and graph.producer.get(c) in downstream - after_block}
    return [c for c in candidates if c not in copies]


def exclusive_ancestors(graph: Graph, tensor: str) -> set[int]:
    """Nodes that compute `tensor` and nothing else (every output consumed only inside the set)."""
    if tensor not in graph.producer:
        return set()
    ancestors = graph.ancestors([tensor])
    exclusive = {graph.producer[tensor]}
    for i in sorted(ancestors, reverse=True):  # consumers come after producers in a topological order
        if i in exclusive:
            continue
        users = [c for t in graph.nodes[i].output for c in graph.consumers.get(t, [])]
        if users and all(c in exclusive for c in users):
            exclusive.add(i)
    return exclusive


def selection_regions(model: onnx.ModelProto) -> Regions:
    graph = Graph.of(model)
    fused = [i for i, n in enumerate(graph.nodes) if n.domain == CUSTOM_DOMAIN]
    out = Regions()
    if fused:
        out.method, out.stages = "fused tokengate::TokenSelect nodes", len(fused)
        out.select = {graph.nodes[i].name for i in fused}
        scores = [graph.nodes[i].input[1] for i in fused]
    else:
        scores = score_tensors(graph)
        out.method, out.stages = "graph region between each stage's scores and its selected tokens", len(scores)
        for s in scores:
            out.select |= {graph.nodes[i].name for i in _standard_selection(graph, s)}
    for s in scores:
        out.scores |= {graph.nodes[i].name for i in exclusive_ancestors(graph, s)}
    out.scores -= out.select
    return out


def _standard_selection(graph: Graph, scores: str) -> set[int]:
    downstream = graph.descendants([scores])
    blocks = {i for i in downstream if graph.nodes[i].op_type in BLOCK_OPS}
    after_blocks = graph.descendants([t for i in blocks for t in graph.nodes[i].output])
    region = downstream - blocks - after_blocks
    upstream_of_scores = graph.ancestors([scores])
    frontier = list(region)
    while frontier:  # pull in the copies that feed the region (x[:, :P], x[:, P:], shapes), not the scores' path
        i = frontier.pop()
        for t in graph.reads[i]:
            p = graph.producer.get(t)
            if p is not None and p not in region and p not in upstream_of_scores and \
                    graph.nodes[p].op_type in GLUE_OPS:
                region.add(p)
                frontier.append(p)
    return region


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
    regions = selection_regions(model)
    shares = parse_profile(events, regions, {n.name for n in model.graph.node})
    if call.runtime != "ort-cpu":
        return SelectionCost(shares.select_share, shares.scores_share, None, shares)
    if not saved:
        raise fail(f"ONNX Runtime did not save the optimized graph of {call.path.name}, so its regions cannot be "
                   "timed as it runs them", f"check that {Path(prefix).parent} is writable")
    timed = time_regions(model, {"select": regions.select, "scores": regions.scores}, call, batches, reps)
    return SelectionCost(timed.shares["select"], timed.shares["scores"], timed, shares)

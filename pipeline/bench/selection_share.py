"""TokenSelect's share of run time (`tokengate bench --selection-share`): which nodes, and how long they take.

The regions are the ones the exporter recorded (`ExportInfo.selection`, pipeline.export.selection): `select` (the
decisions, compaction, kept counts and masks; the fused TokenSelect nodes of plugin flavors) and `scores` (the
class-attention row, head importance and normalisation). The graph analysed is the one ORT runs (its optimized model,
saved by a profiling session): ORT keeps the names of the nodes it does not fuse or fold; `recorded_nodes_found` says
what share of the recorded nodes that graph still has (the time of the others counts as the model's). A packed file
holds two graphs under an If on the batch size (pipeline/export/batch_one.py): the one that runs the batch size is
cut out and optimized as a top graph, which can differ a little from its optimization inside the If.

Why the regions are then timed without the profiler: ORT's profiler formats each node's input and output shapes
into strings inside the node's measured `kernel_time` (its KernelScopeImpl starts the clock before the input shapes
and stops it after the output shapes), so a region of many tiny nodes, such as the standard-op selection, is
overstated several times by its share of kernel time (`python -m tools.node_cost` measures the overhead per node).
So each region is cut out of the optimized graph as a model of its own, fed the values its inputs take in a run of
the whole model on the same batch, and timed unprofiled, alternating with the whole model: share = median region
time / median model time. The cut runs as ORT ran it: same kernels, same threads, ORT's optimizer off (the graph is
already the optimized one). A cut adds one session call through IOBinding and leaves out what only the whole model
pays (its input and outputs crossing into Python).

Only the CPU provider is timed this way: on a GPU provider the cut's inputs and outputs would cross the bus, which
the region does not pay inside the model, so GPU runtimes keep the profiler's share.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper

from pipeline.errors import fail
from pipeline.export.batch_one import branch_model, branch_selection, is_joined
from pipeline.export.graph import node_reads
from pipeline.export.metadata import ExportInfo
from pipeline.export.onnx_export import write_onnx
from pipeline.runners.ort_runner import OrtRunner


@dataclass
class Cut:
    """Nodes of a graph as a model of their own."""

    model: onnx.ModelProto
    inputs: list[str]  # tensors the nodes read and none of them writes (initializers travel inside the model)
    outputs: list[str]  # tensors the nodes write that a node outside them, or the graph, reads


def check_names(model: onnx.ModelProto) -> None:
    """Regions are named node sets (ORT's profile names nodes): every node needs a name of its own."""
    names = [n.name for n in model.graph.node]
    if "" in names or len(set(names)) != len(names):
        raise fail("the optimized graph has unnamed or repeated node names, so its regions cannot be cut out by name",
                   "name every node uniquely in the exported ONNX (the exporter does; re-export the model)")


def region_inputs(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Tensors the named nodes read that none of them writes, initializers aside: what a cut is fed."""
    nodes = [n for n in model.graph.node if n.name in names]
    written = {t for n in nodes for t in n.output}
    initializers = {t.name for t in model.graph.initializer}
    return list(dict.fromkeys(t for n in nodes for t in node_reads(n) if t not in written and t not in initializers))


def cut_region(model: onnx.ModelProto, names: set[str], dtypes: Mapping[str, np.dtype]) -> Cut:
    """The nodes named `names` (kept in the graph's topological order) as a model; `dtypes` gives each input's."""
    nodes = [n for n in model.graph.node if n.name in names]
    initializers = {t.name: t for t in model.graph.initializer}
    read = list(dict.fromkeys(t for n in nodes for t in node_reads(n)))
    inputs = region_inputs(model, names)
    read_outside = {t for n in model.graph.node if n.name not in names for t in node_reads(n)}
    read_outside |= {o.name for o in model.graph.output}
    outputs = [t for n in nodes for t in n.output if t and t in read_outside]
    if not nodes or not outputs:
        raise fail(f"a region of {len(nodes)} nodes with {len(outputs)} outputs read elsewhere cannot be timed on "
                   "its own", "pass the names of nodes whose results the rest of the graph uses")
    graph = helper.make_graph(
        nodes, "region",
        [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[t])), None)
         for t in inputs],
        [onnx.ValueInfoProto(name=t) for t in outputs],  # ORT infers the types of outputs from their producers
        [initializers[t] for t in read if t in initializers])
    out = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return Cut(out, inputs, outputs)


def tapped(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns `tensors` (intermediate values) as outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    known = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    out.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in known)
    return out


def _ort_error(what: str, exc: Exception) -> Exception:
    """ORT's own exceptions (a pybind module) as one-line errors; anything else is a bug and propagates."""
    if not type(exc).__module__.startswith("onnxruntime"):
        return exc
    return fail(f"ONNX Runtime cannot {what}: {str(exc).splitlines()[0]}",
                "report it with the model; the profiler's shares are in bench.json under profile[...]['profiler']")


def _session(model: onnx.ModelProto, call: OrtRunner) -> Any:
    """A CPU session for a piece of `call`'s optimized graph, opened like `call`'s own (threads, custom ops)."""
    from pipeline.runtime import import_onnxruntime, register_token_select, session_options

    ort = import_onnxruntime()
    options = session_options(call.threads, stop_spinning_after_run=True)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already ORT's optimized graph
    if call.plan.custom_ops:
        register_token_select(options)
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _ort_error(f"open a region of {call.path.name} on its own", exc) from None


class RegionTimer:
    """One cut region, its inputs bound once per batch, run through IOBinding (no copies into Python)."""

    def __init__(self, cut: Cut, call: OrtRunner):
        from pipeline.runtime import import_onnxruntime

        self.ort = import_onnxruntime()
        self.cut, self.name = cut, call.path.name
        self.session = _session(cut.model, call)
        self.binding = self.session.io_binding()

    def bind(self, values: Mapping[str, np.ndarray]) -> None:
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        for name in self.cut.inputs:
            self.binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(values[name]))
        for name in self.cut.outputs:
            self.binding.bind_output(name)

    def seconds(self) -> float:
        start = time.perf_counter()
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as exc:
            raise _ort_error(f"run a region of {self.name} on its own", exc) from None
        return time.perf_counter() - start


@dataclass
class RegionTimes:
    """Median seconds of each region and of the whole model, and each region's share."""

    region_s: dict[str, float]
    model_s: float
    shares: dict[str, float]  # median over batches of (region median / model median) on that batch
    reps: int
    batches: int

    def to_dict(self) -> dict:
        return {"region_ms": {k: 1000 * v for k, v in self.region_s.items()}, "run_ms": 1000 * self.model_s,
                "shares": dict(self.shares), "reps": self.reps, "batches": self.batches}


class Capture:
    """The tapped model: one run gives every region's input values on a batch."""

    def __init__(self, optimized: onnx.ModelProto, regions: Mapping[str, set[str]], call: OrtRunner):
        self.inputs = {key: region_inputs(optimized, names) for key, names in regions.items()}
        self.session = _session(tapped(optimized, [t for ts in self.inputs.values() for t in ts]), call)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.input_name = self.session.get_inputs()[0].name
        self.name = call.path.name

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = dict(zip(self.outputs, self.session.run(None, {self.input_name: images})))
        except Exception as exc:
            raise _ort_error(f"run {self.name} with its regions' inputs as outputs", exc) from None
        return {**values, self.input_name: images}


def _alternate(timers: Mapping[str, RegionTimer], call: OrtRunner, images: np.ndarray,
               reps: int) -> tuple[list[float], dict[str, list[float]]]:
    """`reps` times: the whole model once, then each region once. Returns the model's and each region's seconds."""
    for timer in timers.values():
        timer.seconds()  # first run on this batch's shapes: allocations
    call.infer(images)
    model, region = [], {key: [] for key in timers}
    for _ in range(reps):
        start = time.perf_counter()
        call.infer(images)
        model.append(time.perf_counter() - start)
        for key, timer in timers.items():
            region[key].append(timer.seconds())
    return model, region


def time_regions(optimized: onnx.ModelProto, regions: Mapping[str, set[str]], call: OrtRunner,
                 batches: Sequence[np.ndarray], reps: int = 3) -> RegionTimes:
    """Per batch: one run of the tapped model for the regions' input values, then `reps` alternations of the whole
    model (`call`, unprofiled) and each region. A region with no nodes takes no time: share 0."""
    check_names(optimized)
    named = {k: v for k, v in regions.items() if v}
    capture = Capture(optimized, named, call)
    timers: dict[str, RegionTimer] = {}
    model_all: list[float] = []
    region_all: dict[str, list[float]] = {k: [] for k in named}
    per_batch: dict[str, list[float]] = {k: [] for k in named}
    for images in batches:
        values = capture(images)
        for key, names in named.items():
            if key not in timers:
                timers[key] = RegionTimer(cut_region(optimized, names, {t: values[t].dtype
                                                                        for t in capture.inputs[key]}), call)
            timers[key].bind(values)
        model, region = _alternate(timers, call, images, reps)
        model_all += model
        for key, times in region.items():
            region_all[key] += times
            per_batch[key].append(float(np.median(times) / np.median(model)))
    empty = {k: 0.0 for k in regions if k not in named}
    return RegionTimes(region_s={**{k: float(np.median(v)) for k, v in region_all.items()}, **empty},
                       model_s=float(np.median(model_all)),
                       shares={**{k: float(np.median(v)) for k, v in per_batch.items()}, **empty}, reps=reps,
                       batches=len(batches))


@dataclass
class Regions:
    """Node names per category, and how they were found."""

    select: set[str] = field(default_factory=set)
    scores: set[str] = field(default_factory=set)
    method: str = ""
    stages: int = 0
    found: float = 1.0  # share of the recorded nodes that the analysed graph still has


def recorded_regions(selection: dict[str, list[str]], stages: int, graph: onnx.ModelProto) -> Regions:
    """The recorded regions, restricted to the nodes of `graph`: ORT's optimized graph drops the nodes it folds or
    fuses, whose time then counts as the model's (`found` says how many are left)."""
    names = {n.name for n in graph.graph.node}
    recorded = set(selection.get("select", ())) | set(selection.get("scores", ()))
    return Regions(select=set(selection.get("select", ())) & names, scores=set(selection.get("scores", ())) & names,
                   method="nodes recorded by the exporter (tokengate.selection)", stages=stages,
                   found=len(recorded & names) / len(recorded) if recorded else 1.0)


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
    found: float = 1.0  # share of the recorded selection nodes that ORT's graph still has (the rest are fused away)

    def to_dict(self) -> dict:
        return {"select_share": self.select_share, "scores_share": self.scores_share, "matched": self.matched,
                "run_ms": self.run_ms, "top_ops": [[op, share] for op, share in self.top_ops], "method": self.method,
                "stages_found": self.stages, "runs": self.runs, "recorded_nodes_found": self.found}


def run_kernels(events: list[dict], skip_runs: int = 1) -> tuple[list[dict], list[dict]]:
    """From an ONNX Runtime profile: the model runs after the first `skip_runs` (warm-up), by start time, and the
    kernel events from the first of them on."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[skip_runs:]
    if not runs:
        raise ValueError("the profile holds no model run after the warm-up")
    return runs, [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                  and e["ts"] >= runs[0]["ts"]]


def parse_profile(events: list[dict], regions: Regions, graph_names: set[str], skip_runs: int = 1) -> ProfileShares:
    """Shares of kernel time per category over the model runs after the first `skip_runs` (warm-up).

    Each run's share is its own selection (scores) kernel time over its own run time, and the shares are the medians
    over runs: on a shared machine one run slowed by another process would otherwise weigh as much as all others."""
    runs, kernels = run_kernels(events, skip_runs)
    starts = [float(r["ts"]) for r in runs]
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
                         stages=regions.stages, runs=len(runs), found=regions.found)


@dataclass
class SelectionCost:
    """TokenSelect's and the scores' share of run time: timed unprofiled on the CPU provider (`time_regions`), else
    as ORT's profiler attributes kernel time (which overstates regions of small nodes; kept for its breakdown)."""

    select_share: float
    scores_share: float
    timed: Optional[RegionTimes]  # None where regions are not timed on their own (GPU providers)
    profiled: ProfileShares

    def to_dict(self) -> dict:
        profiler = {k: v for k, v in self.profiled.to_dict().items()
                    if k not in ("method", "stages_found", "recorded_nodes_found")}
        out = {"select_share": self.select_share, "scores_share": self.scores_share, "method": self.profiled.method,
               "recorded_nodes_found": self.profiled.found,
               "stages_found": self.profiled.stages, "profiler": profiler}
        if self.timed is None:
            return {**out, "run_ms": self.profiled.run_ms, "timing": "ORT profiler kernel time (regions are timed on "
                    "their own on the CPU provider only)"}
        return {**out, "select_ms": self.timed.region_s["select"] * 1000,
                "scores_ms": self.timed.region_s["scores"] * 1000, "run_ms": self.timed.model_s * 1000,
                "timed_batches": self.timed.batches, "reps": self.timed.reps,
                "timing": "each region cut out of ORT's optimized graph and timed on its own, unprofiled, "
                          "alternating with the whole model (pipeline/bench/selection_share.py)"}


def _graph_run(call: OrtRunner, batch: int) -> tuple[onnx.ModelProto, dict[str, list[str]], bool]:
    """The graph that runs batches of `batch` in `call`'s file, the selection recorded for it, and whether it is a
    branch: for a packed file with a batch-one branch that branch as a model of its own (`batch_one.branch_model`,
    `branch_selection`), else the whole file and its whole record."""
    info: ExportInfo = call.info
    model = onnx.load(str(call.path))
    if not is_joined(model):
        return model, info.selection, False
    return branch_model(model, batch), branch_selection(info.selection, batch), True


def selection_cost(call: OrtRunner, batches: Sequence[np.ndarray], prefix: str, reps: int = 3) -> SelectionCost:
    """TokenSelect's share of `call`'s run time on `batches`.

    A profiling session (ORT's optimized graph saved beside `prefix`) runs the first batch as a warm-up and then every
    batch; its graph names the regions and its profile gives the kernel-time breakdown. On the CPU provider the
    shares reported are then measured without the profiler: each region cut out of that graph and timed alternating
    with `call`. Different batches keep different token counts, so they are what the share should be an average
    case of. A packed file's regions are found in the branch that runs this batch size, profiled as a model of its
    own, which ORT optimizes as a top graph (an If's branch can differ a little); the shares are still of `call`, the
    whole file."""
    info: Optional[ExportInfo] = call.info
    if info is None or not info.selection:
        raise fail(f"{call.path.name} records no selection nodes, so TokenSelect's share cannot be attributed",
                   "re-export it with this version (tokengate export RUN)")
    graph, selection, is_branch = _graph_run(call, batches[0].shape[0])
    analysed = write_onnx(graph, Path(f"{prefix}.branch.onnx")) if is_branch else call.path
    try:
        profiled = OrtRunner(analysed, call.runtime, threads=call.threads, stop_spinning_after_run=True,
                             profile_prefix=prefix)
    finally:
        if analysed != call.path:
            for leftover in (analysed, analysed.with_name(analysed.name + ".data")):
                leftover.unlink(missing_ok=True)
    for images in [batches[0], *batches]:
        profiled.infer(images)
    trace = Path(profiled.end_profiling())
    saved = profiled.optimized is not None and profiled.optimized.is_file()
    try:
        events = json.loads(trace.read_text())
        model = onnx.load(str(profiled.optimized)) if saved else graph
    finally:
        trace.unlink(missing_ok=True)
        if profiled.optimized is not None:
            profiled.optimized.unlink(missing_ok=True)
    del profiled
    regions = recorded_regions(selection, len(info.stages), model)
    shares = parse_profile(events, regions, {n.name for n in model.graph.node})
    if call.runtime != "ort-cpu":
        return SelectionCost(shares.select_share, shares.scores_share, None, shares)
    if not saved:
        raise fail(f"ONNX Runtime did not save the optimized graph of {call.path.name}, so its regions cannot be "
                   "timed as it runs them", f"check that {Path(prefix).parent} is writable")
    timed = time_regions(model, {"select": regions.select, "scores": regions.scores}, call, batches, reps)
    return SelectionCost(timed.shares["select"], timed.shares["scores"], timed, shares)

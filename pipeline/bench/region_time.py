"""A graph region's own run time, measured without ONNX Runtime's profiler.

ORT's profiler formats each node's input and output shapes into strings inside the node's measured `kernel_time`
(its KernelScopeImpl, onnxruntime/core/framework/session_scope.cc, starts the clock before the input shapes and
stops it after the output shapes and thread statistics). On the 2-core build VM a chain of Reshape nodes runs at
0.6-0.8 us a node unprofiled and reports 8-10 us a node profiled (`python -m pipeline.bench.node_cost`), and DeiT-S
combined at batch 1 runs 31% slower profiled (43 -> 57 ms, ~23 us a node over its 584 nodes). A region of ~130 tiny
nodes, such as the standard-op selection, is therefore overstated several times by its share of kernel time.

So the region is cut out of the graph ORT runs (the optimized model a profiling session saves) as a model of its own,
fed the values its inputs take in a run of the whole model on the same batch, and timed unprofiled, alternating with
the whole model: share = median region time / median model time. The cut runs as ORT ran it: same kernels, same
threads, ORT's optimizer off (the graph is already the optimized one). A cut adds one session call through IOBinding,
4-7 us (a one-node cut timed the same way, idle / loaded machine; 1-1.5% of the DeiT-S selection's ~0.4 ms), and
leaves out what only the whole model pays (its input and outputs crossing into Python): cutting out every node of
DeiT-S combined this way ran in 97% of the model's time at batch 1 (33.0 vs 34.1 ms).

Only the CPU provider is timed this way: on a GPU provider the cut's inputs and outputs would cross the bus, which
the region does not pay inside the model, so GPU runtimes keep the profiler's share (`profile.selection_cost`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from pipeline.errors import fail
from pipeline.export.graph import node_reads
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
    options = session_options(call.threads, spin=False)
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

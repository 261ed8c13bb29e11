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
threads, ORT's optimizer off (the graph is already the optimized one). It leaves out what only the whole model pays
(its inputs and outputs crossing into Python); cutting out every node of DeiT-S combined this way ran in 97% of the
model's time at batch 1 (33.0 vs 34.1 ms).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from pipeline.bench.sessions import OrtCall, bench_session_options
from pipeline.errors import fail


@dataclass
class Cut:
    """Nodes of a graph as a model of their own."""

    model: onnx.ModelProto
    inputs: list[str]  # tensors the nodes read and none of them writes (initializers travel inside the model)
    outputs: list[str]  # tensors the nodes write that a node outside them, or the graph, reads


def cut_region(model: onnx.ModelProto, names: set[str], dtypes: Mapping[str, np.dtype]) -> Cut:
    """The nodes named `names` (kept in the graph's topological order) as a model; `dtypes` gives each input's."""
    nodes = [n for n in model.graph.node if n.name in names]
    initializers = {t.name: t for t in model.graph.initializer}
    read = list(dict.fromkeys(t for n in nodes for t in n.input if t))
    inputs = region_inputs(model, names)
    read_outside = {t for n in model.graph.node if n.name not in names for t in n.input}
    read_outside |= {o.name for o in model.graph.output}
    outputs = [t for n in nodes for t in n.output if t in read_outside]
    if not nodes or not outputs:
        raise ValueError(f"a region of {len(nodes)} nodes with {len(outputs)} outputs cannot be timed on its own")
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


def _session(model: onnx.ModelProto, call: OrtCall) -> Any:
    """A session for a piece of `call`'s optimized graph, opened like `call`'s own (providers, threads)."""
    from pipeline.runtime import import_onnxruntime

    ort = import_onnxruntime()
    options = bench_session_options(call.threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already ORT's optimized graph
    if call.plan.custom_ops:
        from pipeline.ops.ort_register import register

        options.register_custom_ops_library(register())
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=list(call.plan.providers),
                                    provider_options=list(call.plan.provider_options))
    except Exception as exc:  # ORT's exceptions live in a pybind module
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise fail(f"ONNX Runtime cannot run a region of {call.path.name} on its own: {str(exc).splitlines()[0]}",
                   "report it with the model; the profiler's shares are still in the report under 'profiler'") \
            from None


class RegionTimer:
    """One cut region, its inputs bound once per batch, run through IOBinding (no copies into Python)."""

    def __init__(self, cut: Cut, call: OrtCall):
        from pipeline.runtime import import_onnxruntime

        self.ort = import_onnxruntime()
        self.cut = cut
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
        self.session.run_with_iobinding(self.binding)
        return time.perf_counter() - start

    def outputs(self) -> list[np.ndarray]:
        return self.binding.copy_outputs_to_cpu()


@dataclass
class RegionTimes:
    """Median seconds per batch of each region and of the whole model, and each region's share."""

    region_s: dict[str, float]
    model_s: float
    shares: dict[str, float]  # median over batches of (region median / model median) on that batch
    reps: int
    batches: int

    def to_dict(self) -> dict:
        return {"region_ms": {k: 1000 * v for k, v in self.region_s.items()}, "run_ms": 1000 * self.model_s,
                "shares": dict(self.shares), "reps": self.reps, "batches": self.batches}


def time_regions(optimized: onnx.ModelProto, regions: Mapping[str, set[str]], call: OrtCall,
                 batches: Sequence[np.ndarray], reps: int = 3) -> RegionTimes:
    """Per batch: one run of the tapped model for the regions' input values, then `reps` alternations of the whole
    model (`call`, unprofiled) and each region. Regions with no nodes get share 0."""
    named = {k: v for k, v in regions.items() if v}
    taps = tapped(optimized, [t for names in named.values() for t in region_inputs(optimized, names)])
    tap_session = _session(taps, call)
    tap_names = [o.name for o in tap_session.get_outputs()]
    input_name = tap_session.get_inputs()[0].name
    timers: dict[str, RegionTimer] = {}
    per_batch: dict[str, list[float]] = {k: [] for k in regions}
    region_all: dict[str, list[float]] = {k: [] for k in regions}
    model_all: list[float] = []
    for images in batches:
        values = dict(zip(tap_names, tap_session.run(None, {input_name: images})))
        values[input_name] = images
        for key, names in named.items():
            if key not in timers:
                dtypes = {t: values[t].dtype for t in region_inputs(optimized, names)}
                timers[key] = RegionTimer(cut_region(optimized, names, dtypes), call)
            timers[key].bind(values)
            timers[key].seconds()  # first run on new shapes: allocations
        call(images)
        model, region = [], {k: [] for k in named}
        for _ in range(reps):
            start = time.perf_counter()
            call(images)
            model.append(time.perf_counter() - start)
            for key, timer in timers.items():
                region[key].append(timer.seconds())
        model_all += model
        for key in regions:
            times = region.get(key, [0.0])
            region_all[key] += times
            per_batch[key].append(float(np.median(times) / np.median(model)))
    return RegionTimes(region_s={k: float(np.median(v)) for k, v in region_all.items()},
                       model_s=float(np.median(model_all)),
                       shares={k: float(np.median(v)) for k, v in per_batch.items()}, reps=reps, batches=len(batches))


def region_inputs(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Tensors the named nodes read that none of them writes, initializers aside: what a cut is fed."""
    nodes = [n for n in model.graph.node if n.name in names]
    written = {t for n in nodes for t in n.output}
    initializers = {t.name for t in model.graph.initializer}
    return list(dict.fromkeys(t for n in nodes for t in n.input if t and t not in written and t not in initializers))

"""The whole `tokengate bench`: models, thresholds, exports, sessions, parity check, timed rounds, top-1, profile,
then bench.json / bench.md / bench.png."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.bench import keep
from pipeline.bench.exports import cached_export, GATED_FLAVORS
from pipeline.bench.images import load_images
from pipeline.bench.prepare import log, prepare_models
from pipeline.bench.report import round_speedups, rows_and_speedups
from pipeline.bench.sessions import OrtCall, TensorRTCall, TorchCall, torch_device_name
from pipeline.bench.target import Target, load_target
from pipeline.bench.timing import mean_over_timed, run_rounds
from pipeline.errors import fail
from pipeline.export.onnx_export import capped_limits
from pipeline.flops import gmacs
from pipeline.models import GatedViT
from pipeline.runners.base import runtime_name

DEFAULT_FLAVOR = {"ort-cpu": "packed", "ort-cuda": "native", "ort-trt": "capped", "tensorrt": "capped",
                  "torch": "padded"}
PARITY_TOL = 1e-3  # logits vs PyTorch, fp32; a larger gap means the runtime is not running the same model


@dataclass(frozen=True)
class BenchOptions:
    runtime: str = "ort-cpu"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    rounds: int = 10
    flavor: Optional[str] = None  # default per runtime (DEFAULT_FLAVOR)
    cache: Optional[Path] = None
    threads: int = 0
    warmup_s: float = 1.0
    images: Optional[int] = None  # pool size (every round times all of it); default: bench.num_images, 256 for a run
    profile_runs: int = 8  # profiled batches per gated model and batch size (the shares are medians over them)
    top1_limit: int = 0  # 0 = the whole validation split
    opset: int = 20
    show: bool = True


def run_bench(source: str | Path, opts: BenchOptions) -> dict[str, Any]:
    """Measure the four models of `source` (a run directory or a config) and return the bench.json dict."""
    runtime = runtime_name(opts.runtime)
    flavor = opts.flavor or DEFAULT_FLAVOR[runtime]
    check_flavor(runtime, flavor)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1 or opts.rounds < 1:
        raise fail("batch sizes and --rounds must be positive", "e.g. --batch-sizes 1,8,32 --rounds 10")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    target = load_target(source)
    show = opts.show
    count = opts.images or (256 if target.run_dir is not None else target.spec.num_images)
    images = load_images(target.cfg, target.spec.images, count, target.spec.seed)
    log(f"{len(images)} images: {images.source}", show)
    models, about = prepare_models(target, images.inputs, show)
    flavor = context_flavor(models, runtime, flavor, explicit=opts.flavor is not None, show=show)
    kept = {name: keep.kept_tokens(m, images.inputs) for name, m in models.items()}
    macs = {name: m.macs(kept[name].double()).numpy() for name, m in models.items()}  # per image
    gflops = {(name, b): gmacs(mean_over_timed(macs[name], b)) for name in models for b in opts.batch_sizes}
    for name in models:
        about[name]["kept_tokens_mean"] = [float(v) for v in kept[name].double().mean(0)]
    calls, device, paths = open_calls(target, models, kept, runtime, flavor, opts)
    check_parity(calls, models, images.inputs[: max(opts.batch_sizes)], strict=runtime != "tensorrt", show=show)
    pool = images.inputs.numpy()
    load_before = os.getloadavg()
    log(f"timing {', '.join(models)} at batch {', '.join(map(str, opts.batch_sizes))}: {opts.rounds} rounds "
        f"(load average {load_before[0]:.2f})", show)
    timings = run_rounds(calls, pool, opts.batch_sizes, opts.rounds, opts.warmup_s, show=show)
    load_after = os.getloadavg()
    top1, top1_source = accuracy(target, calls, opts, show)
    names = list(models)
    rows, speed, eff = rows_and_speedups(timings, names, opts.batch_sizes, gflops, top1)
    report: dict[str, Any] = {
        "runtime": runtime, "device": device, "rows": rows, "speedup_vs_dense": speed, "speedup_efficiency": eff,
        "target": str(source), "flavor": flavor,
        "batch_sizes": list(opts.batch_sizes), "rounds": opts.rounds, "batches_per_round": timings.batches,
        "speedup_rounds": round_speedups(timings, names, opts.batch_sizes),
        "padding_waste": {f"{m}@{b}": float(np.mean(w)) for (m, b), w in timings.waste.items()},
        "padding_waste_per_stage": {f"{m}@{b}": [float(v) for v in np.mean(w, axis=0)]
                                    for (m, b), w in timings.waste.items()},
        "images": images.source, "top1_source": top1_source, "models": about,
        "onnx": {name: str(p) for name, p in paths.items()},
        "machine": {"load_before": list(load_before), "load_after": list(load_after), "cpus": os.cpu_count(),
                    "cpu": cpu_name(), "python": platform.python_version()},
    }
    if runtime.startswith("ort"):
        report.update(profile_selection(calls, pool, opts, show))
    return report


def check_flavor(runtime: str, flavor: str) -> None:
    allowed = ("padded", "packed") if runtime == "torch" else GATED_FLAVORS
    if flavor not in allowed:
        raise fail(f"flavor {flavor!r} does not run on {runtime}", f"use one of {', '.join(allowed)}")
    if runtime in ("tensorrt", "ort-trt") and flavor.startswith("packed"):
        raise fail(f"the packed layout is an ONNX Runtime prototype; {runtime} builds static-shape graphs",
                   "use --flavor capped (or plugin with our TensorRT plugin)")


def context_flavor(models: dict[str, GatedViT], runtime: str, flavor: str, explicit: bool, show: bool) -> str:
    """The packed layout has no context tokens: models that keep dropped tokens as context run the padded graphs
    (`native` on ONNX Runtime, `padded` in PyTorch) unless a packed flavor was asked for, which is refused."""
    if not flavor.startswith("packed") or all(m.dropped_tokens == "discard" for m in models.values()):
        return flavor
    if explicit:
        raise fail(f"--flavor {flavor} discards dropped tokens, but this run keeps them as context "
                   "(gates.dropped_tokens: context)", f"use --flavor {'padded' if runtime == 'torch' else 'native'}")
    fallback = "padded" if runtime == "torch" else "native"
    log(f"flavor {fallback}: the packed layout has no context tokens (gates.dropped_tokens: context)", show)
    return fallback


def open_calls(target: Target, models: dict[str, GatedViT], kept: dict[str, torch.Tensor], runtime: str, flavor: str,
               opts: BenchOptions) -> tuple[dict, str, dict[str, Path]]:
    """One callable per model; exports (cached) for the ONNX runtimes."""
    if runtime == "torch":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        calls = {n: TorchCall(m, packed=flavor == "packed", device=dev) for n, m in models.items()}
        return calls, torch_device_name(dev), {}
    cache = Path(opts.cache) if opts.cache else default_cache(target)
    calls, paths = {}, {}
    for name, model in models.items():
        caps = None
        if model.stages and flavor == "capped":
            caps = capped_limits(kept[name], model.num_prefix, 1.0)[0]
        path, cached = cached_export(model, name, flavor, cache, target.cfg, opts.opset, caps)
        log(f"{name}: {'cached' if cached else 'exported'} {path}", opts.show)
        paths[name] = path
        if runtime == "tensorrt":
            calls[name] = TensorRTCall(path, max(opts.batch_sizes))
        else:
            calls[name] = OrtCall(path, runtime, threads=opts.threads)
    first = next(iter(calls.values()))
    return calls, device_name(runtime, first, opts.threads), paths


def default_cache(target: Target) -> Path:
    if target.run_dir is not None:
        return target.run_dir / "bench_cache"
    return Path("runs") / "bench_cache" / target.name


def device_name(runtime: str, call: Any, threads: int) -> str:
    if runtime == "tensorrt":
        return "TensorRT engine"
    import onnxruntime

    provider = call.session.get_providers()[0]
    where = cpu_name() if provider == "CPUExecutionProvider" else "GPU"
    return f"onnxruntime {onnxruntime.__version__} {provider} on {where} ({threads or os.cpu_count()} threads)"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def check_parity(calls: dict, models: dict[str, GatedViT], images: torch.Tensor, strict: bool = True,
                 show: bool = True) -> None:
    """Every runtime model must compute what its PyTorch model computes (same kept tokens, close logits); an fp16
    TensorRT engine (`strict=False`) may flip tokens at a threshold, so there it is only reported."""
    for name, call in calls.items():
        logits, kept = call(images.numpy())
        with torch.no_grad():
            ref_logits, ref_kept = models[name].eval().forward_dropped(images)
        gap = float(np.abs(logits - ref_logits.numpy()).max())
        same_kept = kept is None or bool((kept == ref_kept.numpy()).all())
        if gap > PARITY_TOL or not same_kept:
            message = (f"{name}: the runtime model differs from PyTorch (max |logit gap| {gap:.2e}, kept tokens "
                       f"{'equal' if same_kept else 'differ'})")
            if strict:
                raise RuntimeError(message)
            log(message, show)
            return
    log(f"parity with PyTorch: logits within {PARITY_TOL:g}, kept tokens equal", show)


def accuracy(target: Target, calls: dict, opts: BenchOptions, show: bool) -> tuple[dict, str]:
    """Top-1 on the validation split, through the runtime being timed; null for random weights."""
    if target.random_weights:
        return {}, "null: random weights (speed does not depend on them)"
    from pipeline.data import load_dataset, stratified_indices

    try:
        data = load_dataset(target.cfg.data, target.cfg.model)
    except Exception as exc:  # a config whose data is not here still benches speed
        log(f"no top-1: {exc}", show)
        return {}, f"null: validation data not available ({exc})"
    split = data.val
    if opts.top1_limit:
        split = split.subset(stratified_indices(split.labels, opts.top1_limit, 0))
    correct = {name: 0 for name in calls}
    for images, labels in data.batches(split, 256):
        batch = images.numpy()
        for name, call in calls.items():
            correct[name] += int((call(batch)[0].argmax(-1) == labels.numpy()).sum())
    log(f"top-1 on {len(split)} validation images", show)
    return {n: 100.0 * c / len(split) for n, c in correct.items()}, \
        f"validation split of {target.cfg.data.dataset} ({len(split)} images), through the timed runtime"


def profile_selection(calls: dict[str, Any], pool: np.ndarray, opts: BenchOptions, show: bool) -> dict[str, Any]:
    """TokenSelect's share of run time per gated model and batch size (`profile.selection_cost`)."""
    from pipeline.bench.profile import selection_cost
    from pipeline.bench.timing import batch_at

    shares, details = {}, {}
    method = None
    for name, call in calls.items():
        if name in ("dense", "static"):
            continue
        for batch in opts.batch_sizes:
            prefix = str(call.path.with_name(f".profile.{name}.{batch}"))
            batches = [batch_at(pool, batch, i) for i in range(opts.profile_runs)]
            result = selection_cost(call, batches, prefix)
            shares[f"{name}@{batch}"] = result.select_share
            details[f"{name}@{batch}"] = result.to_dict()
            method = result.profiled.method
    if shares:
        worst = max(shares, key=shares.get)
        log(f"TokenSelect share of run time: at most {100 * shares[worst]:.2f}% ({worst})", show)
    return {"tokenselect_share": shares, "profile": details, "profile_method": method or "n/a"}

"""The whole `tokengate bench`: the run directory, its exported files, parity, timed rounds, top-1, then bench.json.

It times the files a user ships. A trained run's `model.<flavor>.onnx` files are timed as they are; the missing ones,
and ones another exporter wrote (`pipeline.export.exporter_id`), are exported first through `tokengate export`'s own
code (`export_run`). A config first becomes a run directory (`prepare.bench_run`). Each file runs through
`pipeline.runners`, as `tokengate validate` runs it, and is checked against its PyTorch reference with validate's
comparison and tolerance before it is timed.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.artifacts import sha256_file
from pipeline.bench.options import TURNS, BenchOptions
from pipeline.bench.prepare import bench_run, log
from pipeline.bench.report import round_speedups, rows_and_speedups
from pipeline.bench.target import load_target
from pipeline.bench.timing import batch_at, mean_over_timed, run_rounds
from pipeline.config import Config, load_run_config
from pipeline.errors import fail
from pipeline.export.metadata import is_current
from pipeline.export.run_export import artifact_path, export_run
from pipeline.flavors import DEPLOY
from pipeline.flops import gmacs
from pipeline.images import ImageSet, load_images
from pipeline.runners.base import Runner, runtime_name

# The flavors a runtime can run, in the order the report lists them.
RUNTIME_FLAVORS = {"ort-cpu": ("packed", "native", "plugin", "capped"), "ort-cuda": ("native", "capped", "packed"),
                   "ort-trt": ("capped",), "tensorrt": ("capped", "plugin"), "torch": ("student",)}


def run_bench(source: str | Path, opts: BenchOptions) -> dict[str, Any]:
    """Bench `source` (a run directory or a config) and return the bench.json dict."""
    from pipeline.models import load_student, load_teacher

    runtime = runtime_name(opts.runtime)
    if not opts.batch_sizes or min(opts.batch_sizes) < 1 or opts.rounds < 1 or opts.sessions < 1:
        raise fail("batch sizes, --rounds and --sessions must be positive",
                   "e.g. --batch-sizes 1,8,32 --rounds 10 --sessions 3")
    if opts.images is not None and opts.images < 1 or opts.top1_limit < 0 or opts.warmup_s < 0 or opts.threads < 0:
        raise fail(f"--images {opts.images}, --top1-limit {opts.top1_limit}, --warmup {opts.warmup_s:g} and --threads "
                   f"{opts.threads} must not be negative (--images at least 1)",
                   "e.g. --images 48, --top1-limit 0 (the whole split), --warmup 1, --threads 2")
    if opts.turns not in TURNS:
        raise fail(f"--turns {opts.turns!r} is not one of {', '.join(TURNS)}", "e.g. --turns batch")
    target = load_target(source, opts.overrides)
    if target.run_dir is not None and opts.overrides:
        raise fail(f"--set changes a config, but {source} is a run directory whose files follow its config.json",
                   "pass --set with a CONFIG target, or bench the run as it is")
    run_dir = bench_run(target, opts.run_root, opts.show, opts.overrides)
    cfg = load_run_config(run_dir)
    teacher, student = load_teacher(run_dir, cfg), load_student(run_dir, cfg)
    if not student.stages:
        raise fail(f"the student of {run_dir} has no token stages, so there is no token-gated model to bench",
                   "bench a run trained with token stages (gates.token_stages null or a list)")
    flavors = choose_flavors(runtime, opts.flavors)
    has_data = is_trained(cfg)
    images = bench_images(cfg, opts.images)
    log(f"{len(images)} images: {images.source}", opts.show)
    files = exported_files(run_dir, runtime, flavors, opts.show)
    runners = {name: open_runner(path, runtime, opts) for name, path in files.items()}
    pool = images.inputs.numpy()
    kept, parity = check_and_count(files, runners, pool, cfg, max(opts.batch_sizes), strict=runtime != "tensorrt",
                                   show=opts.show)
    macs = {name: (teacher if name == "dense" else student).macs(kept[name]).numpy() for name in runners}
    for name, (path, baseline_macs) in baseline_files(run_dir, runtime, opts.baselines).items():
        files[name], runners[name] = path, open_runner(path, runtime, opts)
        macs[name] = np.full(len(pool), float(baseline_macs))
        kept[name] = kept["dense"][:, :0]  # it reports no kept tokens
    gflops = {(name, b): gmacs(mean_over_timed(macs[name], b)) for name in runners for b in opts.batch_sizes}
    load_before = os.getloadavg()
    log(f"timing {', '.join(runners)} at batch {', '.join(map(str, opts.batch_sizes))}: {opts.rounds} rounds over "
        f"{opts.sessions} session(s) per file (load average {load_before[0]:.2f})", opts.show)
    sessions = {name: [runner, *(open_runner(files[name], runtime, opts) for _ in range(opts.sessions - 1))]
                for name, runner in runners.items()}
    timings = run_rounds(sessions, pool, opts.batch_sizes, opts.rounds, opts.warmup_s, show=opts.show,
                         turns=opts.turns)
    del sessions  # the extra sessions' memory: `runners` keep the first ones for top-1 and the selection share
    load_after = os.getloadavg()
    top1, top1_source = accuracy(has_data, cfg, runners, opts)
    names = list(runners)
    rows, speed, eff = rows_and_speedups(timings, names, opts.batch_sizes, gflops, top1)
    report: dict[str, Any] = {
        "runtime": runtime, "device": device_name(runtime, runners, opts.threads), "rows": rows,
        "speedup_vs_dense": speed, "speedup_efficiency": eff, "target": str(source), "run_dir": str(run_dir),
        "flavors": list(flavors), "deploy": DEPLOY,
        "files": {name: {"path": str(path), "sha256": sha256_file(path)} for name, path in files.items()},
        "parity": parity,
        "batch_sizes": list(opts.batch_sizes), "rounds": opts.rounds, "sessions": opts.sessions, "turns": opts.turns,
        "batches_per_round": timings.batches,
        "speedup_rounds": round_speedups(timings, names, opts.batch_sizes),
        "padding_waste": {f"{m}@{b}": float(np.mean(w)) for (m, b), w in timings.waste.items()},
        "padding_waste_per_stage": {f"{m}@{b}": [float(v) for v in np.mean(w, axis=0)]
                                    for (m, b), w in timings.waste.items()},
        "kept_tokens_mean": {name: [float(v) for v in kept[name].double().mean(0)] for name in runners},
        "images": images.source, "top1_source": top1_source,
        "machine": {"load_before": list(load_before), "load_after": list(load_after), "cpus": os.cpu_count(),
                    "cpu": cpu_name(), "python": platform.python_version()},
    }
    if opts.selection_share:
        report.update(selection_share(runners, pool, opts, runtime))
    return report


def is_trained(cfg: Config) -> bool:
    """A trained run (its caps were fitted on its validation split); a config's run is calibrated on the bench
    photos instead, and has no labelled data."""
    return cfg.export.caps_images == "val"


def bench_images(cfg: Config, count: Optional[int] = None) -> ImageSet:
    """The image pool the bench times a run on: `count` images (default 256) of a trained run's validation split,
    or `count` (default bench.num_images) of the bench photos for a config's run."""
    if is_trained(cfg):
        return load_images(cfg, "val", count or 256, cfg.bench.seed)
    return load_images(cfg, "sample-photos", count or cfg.bench.num_images, cfg.bench.seed)


def baseline_files(run_dir: Path, runtime: str, names: Sequence[str]) -> dict[str, tuple[Path, float]]:
    """{row name: (file, MACs per image)} of the baseline files asked for; each must be in the run and ours."""
    from pipeline.export.metadata import read_info

    out = {}
    for name in names:
        path = run_dir / name
        if not runtime.startswith("ort"):
            raise fail(f"baseline {name} is an ONNX file, timed on ONNX Runtime only", "use --runtime ort-cpu")
        if not path.is_file():
            raise fail(f"{path} does not exist", "write it first: tokengate calibrate exports baseline.tome.onnx")
        info = read_info(path)
        if not info.baseline:
            raise fail(f"{path} is not a baseline file (its metadata has no baseline record)",
                       "pass a file that tokengate calibrate wrote, e.g. baseline.tome.onnx")
        out[name.removesuffix(".onnx")] = (path, float(info.baseline["macs"]))
    return out


def choose_flavors(runtime: str, asked: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The flavors to time: those asked (each must run on `runtime`), or every one the runtime runs."""
    runs_here = RUNTIME_FLAVORS[runtime]
    for flavor in asked or ():
        if flavor not in runs_here:
            raise fail(f"flavor {flavor!r} does not run on {runtime}", f"use one of {', '.join(runs_here)}")
    return tuple(asked) if asked else runs_here


def exported_files(run_dir: Path, runtime: str, flavors: Sequence[str], show: bool) -> dict[str, Path]:
    """{row name: file}: dense first, then each flavor; missing files, and files another exporter wrote, are exported
    with `export_run`. The torch runtime times the checkpoints themselves."""
    if runtime == "torch":
        return {"dense": run_dir / "teacher.safetensors", "student": run_dir / "student.safetensors"}
    wanted = ["dense", *flavors]
    missing = [f for f in wanted if not is_current(artifact_path(run_dir, f))]
    if missing:
        log(f"exporting {', '.join(missing)}, missing or written by another exporter (tokengate export {run_dir} "
            f"--flavor {','.join(missing)})", show)
        export_run(run_dir, missing)
    return {f: artifact_path(run_dir, f) for f in wanted}


def open_runner(path: Path, runtime: str, opts: BenchOptions) -> Runner:
    """The runner `tokengate validate` would use, with the bench's threads; ORT threads spin during a run and stop
    when it returns (`session_options`)."""
    if runtime == "torch":
        from pipeline.runners.torch_runner import TorchRunner

        return TorchRunner(path, threads=opts.threads)
    if runtime == "tensorrt":
        return engine_runner(path, max(opts.batch_sizes))
    from pipeline.runners.ort_runner import OrtRunner

    return OrtRunner(path, runtime, threads=opts.threads, stop_spinning_after_run=True)


def engine_runner(path: Path, max_batch: int, precision: str = "fp16") -> Runner:
    """Build the file with `tokengate build`'s code (cached by the build), then run the engine."""
    try:
        from pipeline.build.run_build import build_engine
        from pipeline.runners.tensorrt import TensorRTRunner
    except ImportError as exc:
        raise fail(f"the TensorRT runtime is not available here ({exc})",
                   "run on a machine with TensorRT and an NVIDIA GPU, or use --runtime ort-cpu") from None
    result = build_engine(path, precision=precision, batch=f"1,{max_batch},{max_batch}")
    return TensorRTRunner(result.engine, auto_chunk=True)  # top-1 runs batches of 256, beyond the timed profile


MAX_TIE_SHARE = 0.05  # images whose kept tokens may differ from PyTorch's (a score within rounding of a threshold)


def check_and_count(files: dict[str, Path], runners: dict[str, Runner], pool: np.ndarray, cfg: Config,
                    batch: int, strict: bool, show: bool) -> tuple[dict[str, Any], dict[str, dict]]:
    """Every file against its PyTorch reference on the pool, with `tokengate validate`'s comparison and tolerance
    (validate.tol_vs_torch of the run); returns each row's kept tokens per image [N, S] (what its GFLOPs are counted
    from) and the comparison per file.

    The images that keep the same tokens as in PyTorch must agree within the tolerance. An image may keep a different
    count where one of its scores lies within float rounding of a threshold (fitted thresholds sit between two
    pooled scores, so on random weights, whose scores are dense, some do): at most MAX_TIE_SHARE of the pool, and
    bench.json counts them. `tokengate validate` stays strict about every image. An fp16 TensorRT engine
    (`strict=False`) flips more, so there any gap is only reported."""
    import torch

    from pipeline.validate.compare import reference_runner, torch_gap
    from pipeline.validate.subject import describe

    tolerance = cfg.validate.tol_vs_torch
    kept, parity, references = {}, {}, {}
    for name, runner in runners.items():
        subject = describe(files[name])
        key = (subject.reference_model, tuple(subject.caps or ()))
        chunks = [pool[start:start + batch] for start in range(0, len(pool), batch)]
        if key not in references:  # plugin, native and packed share the student's outputs: run it once
            reference = reference_runner(subject)
            references[key] = [reference.infer(chunk) for chunk in chunks]
        got, ref = [runner.infer(chunk) for chunk in chunks], references[key]
        logits, ref_logits = np.concatenate([g.logits for g in got]), np.concatenate([r.logits for r in ref])
        same = np.ones(len(pool), dtype=bool)
        if got[0].kept_tokens is not None:
            counts = np.concatenate([g.kept_tokens for g in got])
            same = (counts == np.concatenate([r.kept_tokens for r in ref])).all(axis=1)
            kept[name] = torch.from_numpy(counts).double()
        else:
            kept[name] = torch.zeros(len(pool), 0, dtype=torch.float64)
        gap = torch_gap(logits[same], ref_logits[same]) if same.any() else 0.0
        ties = int((~same).sum())
        parity[name] = {"max_abs_diff_vs_torch": gap, "images_keeping_other_tokens": ties, "images": len(pool)}
        if not gap <= tolerance or ties > MAX_TIE_SHARE * len(pool):
            message = (f"{files[name]} differs from its PyTorch reference: max |logit - torch| {gap:.2e} (tolerance "
                       f"{tolerance:g}, validate.tol_vs_torch) on the images that keep the same tokens, and {ties} of "
                       f"{len(pool)} images keep other tokens")
            if strict:
                raise fail(message, f"run tokengate validate {files[name]} for the whole comparison")
            log(message, show)
    ties = sum(p["images_keeping_other_tokens"] for p in parity.values())
    outside = [name for name, p in parity.items() if not p["max_abs_diff_vs_torch"] <= tolerance]
    agreement = f"{len(outside)} files outside {tolerance:g} ({', '.join(outside)})" if outside else \
        f"every file within {tolerance:g}"
    log(f"parity with PyTorch: {agreement} (validate.tol_vs_torch)"
        + (f"; {ties} image runs keep other tokens (a score at a threshold)" if ties else ", kept tokens equal"), show)
    return kept, parity


def accuracy(trained: bool, cfg: Config, runners: dict[str, Runner], opts: BenchOptions) -> tuple[dict, str]:
    """Top-1 on the validation split, through the runtime being timed; null for a config's run (no training)."""
    if not trained:
        return {}, "null: the weights were not trained on the config's data"
    if not opts.top1:
        return {}, "null: not asked"
    from pipeline.data import load_dataset, stratified_indices

    try:
        data = load_dataset(cfg.data, cfg.model)
    except Exception as exc:  # a run whose data is not here still benches speed
        log(f"no top-1: {exc}", opts.show)
        return {}, f"null: validation data not available ({exc})"
    split = data.val
    if opts.top1_limit:
        split = split.subset(stratified_indices(split.labels, opts.top1_limit, 0))
    correct = {name: 0 for name in runners}
    for images, labels in data.batches(split, 256):
        for name, runner in runners.items():
            correct[name] += int((runner.infer(images.numpy()).logits.argmax(-1) == labels.numpy()).sum())
    log(f"top-1 on {len(split)} validation images", opts.show)
    return {n: 100.0 * c / len(split) for n, c in correct.items()}, \
        f"validation split of {cfg.data.dataset} ({len(split)} images), through the timed runtime"


def device_name(runtime: str, runners: dict[str, Runner], threads: int) -> str:
    if runtime == "tensorrt":
        info = next(iter(runners.values())).info  # every engine of one bench is built by the same runtime and target
        return f"{info.runtime} {info.runtime_version} {info.precision} engine, {info.target}, on {gpu_name()}"
    if runtime == "torch":
        import torch

        if torch.cuda.is_available():
            return f"torch {torch.__version__} on {torch.cuda.get_device_name()}"
        return f"torch {torch.__version__} on CPU ({torch.get_num_threads()} threads)"
    import onnxruntime

    provider = next(iter(runners.values())).session.get_providers()[0]
    where = cpu_name() if provider == "CPUExecutionProvider" else "GPU"
    count = f"{threads} threads" if threads else "ONNX Runtime's default threads: one per physical core"
    return f"onnxruntime {onnxruntime.__version__} {provider} on {where} ({count})"


def gpu_name() -> str:
    from pipeline.build.targets import query_gpu

    return (query_gpu("name") or ["an unnamed GPU"])[0]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def selection_share(runners: dict[str, Runner], pool: np.ndarray, opts: BenchOptions, runtime: str) -> dict[str, Any]:
    """TokenSelect's share of run time per flavor and batch size (`selection_share.selection_cost`), ONNX Runtime
    only."""
    if not runtime.startswith("ort"):
        return {"tokenselect_share": {}, "profile_method": f"n/a: --selection-share needs ONNX Runtime, not {runtime}"}
    from pipeline.bench.selection_share import selection_cost

    shares, details, method = {}, {}, "n/a"
    for name, runner in runners.items():
        if name == "dense" or getattr(runner, "info", None) is not None and runner.info.baseline:
            continue
        for batch in opts.batch_sizes:
            prefix = str(Path(runner.path).with_name(f".profile.{name}.{batch}"))
            result = selection_cost(runner, [batch_at(pool, batch, i) for i in range(opts.profile_runs)], prefix)
            shares[f"{name}@{batch}"] = result.select_share
            details[f"{name}@{batch}"] = result.to_dict()
            method = result.profiled.method
    if shares:
        worst = max(shares, key=shares.get)
        log(f"TokenSelect share of run time: at most {100 * shares[worst]:.2f}% ({worst})", opts.show)
    return {"tokenselect_share": shares, "profile": details, "profile_method": method}

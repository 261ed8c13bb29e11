"""`make gpu-check`: everything in the project that needs an NVIDIA GPU, as one prepared run (about 5 min on an H100).

    python -m pipeline.gpu_check [--run runs/fmnist-tiny] [--json gpu-check.json] [--table gpu-check.md]

Six parts, each recorded as passed, failed, measured, skipped (with the reason it could not run) or error:
  kernels        build plugins/ for this GPU's arch; the kernel tests vs the PyTorch reference (fp32, fp16, C=384,
                 N=197 and N>256, B=64, a 3-stage chain); the plugin self test where TensorRT headers were found
  sanitizer      compute-sanitizer memcheck and racecheck over a subset of those tests
  kernel_timing  the two TokenSelect launches, B=64 N=197 C=384 fp16, CUDA events, median of 300 runs (goal < 20 us)
  ort_cuda       ONNX Runtime's CUDA EP: the run's native, capped and packed exports validated at batch 1, 7, 64
  torch_gpu      DeiT-S geometry (random weights): dense vs combined throughput on the GPU, fp16, batch 1 and 64
  tensorrt       TensorRT or TensorRT-RTX: the capped engine built and run, compared with ONNX Runtime
Without a GPU it says so, writes the JSON with every part skipped, and exits 0. It exits 1 when a part failed.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.artifacts import write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
PARTS = ("kernels", "sanitizer", "kernel_timing", "ort_cuda", "torch_gpu", "tensorrt")
STATUSES = ("passed", "failed", "measured", "skipped", "error")
BUDGET_S = 420.0  # the parts' share of the 8 minutes; set-up (venv, wheel) takes the rest
KERNEL_TESTS = "tests/plugins/test_token_select_kernel_cuda.py"
# Under the sanitizers: the DeiT-S geometry, the chain, min_keep's radix select and the narrow copy paths.
SANITIZER_SELECTION = "deit_s_geometry or three_stage_chain or none_kept or odd_channels"
KERNEL_GOAL_US = 20.0
FLAVORS = ("native", "capped", "packed")
ORT_BATCH_SIZES = (1, 7, 64)
ORT_IMAGES = 1024
# GPU fp32: cuBLAS picks kernels per shape (and may use TF32 on Ampere and later), so a batch's logits differ from
# batch 1's and from PyTorch-on-CPU's in the last bits, where ONNX Runtime CPU is held to 1e-5 / 1e-4.
GPU_FP32_TOLERANCES = {"tol_vs_torch": 2e-3, "tol_vs_b1": 1e-3, "max_flips": 0}


@dataclass
class Part:
    """One part's outcome: `summary` is the table's one line, `details` its numbers."""

    status: str
    summary: str
    details: dict = field(default_factory=dict)
    seconds: float = 0.0


def skipped(reason: str) -> Part:
    return Part("skipped", reason)


def run_command(cmd: list[str], timeout: float, env: Optional[dict] = None) -> tuple[int, str]:
    """Return code and the output's last 4000 characters; a timeout is rc 124, as timeout(1) says."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1.0),
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return 124, (out.decode(errors="replace") if isinstance(out, bytes) else out)[-4000:]
    return done.returncode, (done.stdout + done.stderr)[-4000:]


def gpu_info() -> Optional[dict]:
    """The GPU, its driver and compute capability from nvidia-smi, or None where there is no usable GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    rc, out = run_command([smi, "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"],
                          30)
    if rc != 0 or not out.strip():
        return None
    name, driver, cap, memory = [cell.strip() for cell in out.strip().splitlines()[0].split(",")][:4]
    return {"name": name, "driver": driver, "compute_capability": cap, "memory": memory}


def versions() -> dict:
    """Library versions the results depend on; a missing one is null."""
    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "tensorrt", "tensorrt_rtx"):
        try:
            found[module] = str(__import__(module).__version__)
        except Exception:  # noqa: BLE001 - absent, a stub, or broken: all mean "not usable here"
            found[module] = None
    try:
        import torch

        found["torch_cuda"] = torch.version.cuda
    except ImportError:
        found["torch_cuda"] = None
    nvcc = shutil.which("nvcc")
    if nvcc:
        rc, out = run_command([nvcc, "--version"], 30)
        found["nvcc"] = next((line.split("release")[-1].strip() for line in out.splitlines() if "release" in line),
                             None) if rc == 0 else None
    else:
        found["nvcc"] = None
    return found


def pytest_counts(junit: Path) -> dict:
    """passed/failed/skipped counts from pytest's JUnit XML."""
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skips = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"passed": tests - failures - errors - skips, "failed": failures + errors, "skipped": skips}


def part_kernels(gpu: dict, remaining: Callable[[], float], build_dir: Path) -> Part:
    """Build for this GPU's arch (with the plugin where TensorRT headers are found), then the kernel tests."""
    arch = gpu["compute_capability"].replace(".", "")
    options = [f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DCMAKE_BUILD_TYPE=Release"]
    for var in ("TensorRT_ROOT", "TensorRT_INCLUDE_DIR"):
        if os.environ.get(var):
            options.append(f"-D{var}={os.environ[var]}")
    rc, out = run_command(["cmake", "-S", "plugins", "-B", str(build_dir), *options], min(120, remaining()))
    if rc == 0:
        rc, out = run_command(["cmake", "--build", str(build_dir), f"-j{os.cpu_count() or 2}"], min(240, remaining()))
    if rc != 0:
        return Part("failed", f"building plugins/ for sm_{arch} failed (rc {rc})", {"log_tail": out[-1500:]})
    junit = build_dir / "kernel-tests.xml"
    rc, out = run_command([sys.executable, "-m", "pytest", "-q", "-m", "gpu", KERNEL_TESTS, f"--junitxml={junit}",
                           "-p", "no:cacheprovider"], min(240, remaining()))
    counts = pytest_counts(junit) if junit.is_file() else {"passed": 0, "failed": 1, "skipped": 0}
    details: dict[str, Any] = {"arch": f"sm_{arch}", "tests": counts}
    ok = rc == 0 and counts["failed"] == 0 and counts["passed"] > 0
    selftest, plugin = build_dir / "tokengate_plugin_selftest", build_dir / "libtokengate_plugins.so"
    if selftest.is_file() and plugin.is_file():
        src, sout = run_command([str(selftest), str(plugin)], min(120, remaining()))
        details["plugin_selftest"] = sout.strip().splitlines()[-1] if sout.strip() else f"rc {src}"
        ok = ok and src == 0
    else:
        details["plugin_selftest"] = "skipped: the plugin was not built (no TensorRT headers; set TensorRT_ROOT)"
    if not ok:
        details["log_tail"] = out[-1500:]
    summary = (f"sm_{arch}: {counts['passed']} kernel tests passed, {counts['failed']} failed, {counts['skipped']} "
               f"skipped; plugin self test: {details['plugin_selftest']}")
    return Part("passed" if ok else "failed", summary, details)


def find_sanitizer() -> Optional[str]:
    candidates = [shutil.which("compute-sanitizer")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "compute-sanitizer"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent / "compute-sanitizer"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def part_sanitizer(remaining: Callable[[], float], kernels: Part) -> Part:
    if kernels.status != "passed":
        return skipped(f"the kernel part did not pass ({kernels.status}): nothing sound to sanitize")
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return skipped("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin): install the CUDA "
                       "toolkit's sanitizer")
    # Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees overruns past a tensor.
    env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    results = {}
    for tool in ("memcheck", "racecheck"):
        rc, out = run_command([sanitizer, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20",
                               sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", KERNEL_TESTS,
                               "-k", SANITIZER_SELECTION], min(200, remaining()), env)
        summary = next((line for line in reversed(out.splitlines()) if "ERROR SUMMARY" in line), "")
        results[tool] = {"rc": rc, "error_summary": summary.strip("= ").strip()}
        if rc != 0:
            results[tool]["log_tail"] = out[-1500:]
    ok = all(r["rc"] == 0 for r in results.values())
    line = "; ".join(f"{tool}: {r['error_summary'] or 'rc ' + str(r['rc'])}" for tool, r in results.items())
    return Part("passed" if ok else "failed", line, {"selection": SANITIZER_SELECTION, **results})


def part_kernel_timing(kernels: Part, library: Path, runs: int = 300, warmup: int = 50) -> Part:
    """Each run between its own pair of CUDA events; the median over `runs` (after `warmup`), in microseconds."""
    if kernels.status != "passed":
        return skipped(f"the kernel part did not pass ({kernels.status})")
    import torch

    from pipeline import cuda_kernels

    lib = cuda_kernels.load_library(library)
    b, n, c, p = 64, 197, 384, 1
    details: dict[str, Any] = {"batch": b, "tokens": n, "channels": c, "runs": runs, "keep": 0.5}
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        x = torch.randn(b, n, c, device="cuda", dtype=dtype)
        scores = torch.randn(b, n - p, device="cuda").to(dtype)
        threshold = torch.quantile(scores.float(), 0.5).to(dtype)  # half the patches pass
        launch = cuda_kernels.prepare_launch(lib, x, scores, threshold, p, 1)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for _ in range(warmup):
            launch.run()
        for start, end in events:
            start.record()
            status = launch.run()
            end.record()
            if status != 0:
                return Part("failed", f"tokengate_token_select returned {status}")
        torch.cuda.synchronize()
        times = sorted(start.elapsed_time(end) * 1000.0 for start, end in events)
        details[name] = {"median_us": round(statistics.median(times), 2), "p10_us": round(times[runs // 10], 2),
                         "p90_us": round(times[runs * 9 // 10], 2)}
    median = details["fp16"]["median_us"]
    details["goal_us"] = KERNEL_GOAL_US
    status = "passed" if median < KERNEL_GOAL_US else "failed"
    return Part(status, f"fp16 median {median:.1f} us (goal < {KERNEL_GOAL_US:.0f} us), fp32 median "
                        f"{details['fp32']['median_us']:.1f} us, B={b} N={n} C={c}", details)


def part_ort_cuda(run_dir: Path, remaining: Callable[[], float]) -> Part:
    """`tokengate validate` of each flavor on the CUDA EP, against PyTorch, at the GPU fp32 tolerances above."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return skipped(f"onnxruntime is not importable ({exc})")
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return skipped(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has {', '.join(providers)}): "
                       "install onnxruntime-gpu (make setup GPU=1, or put its wheel in .whl/ for make gpu-check)")
    if not (run_dir / "student.safetensors").is_file():
        return skipped(f"{run_dir} has no trained student: make engine trains and exports the default run")
    from pipeline.errors import TokenGateError
    from pipeline.validate.compare import validate

    overrides = [f"validate.{key}={value}" for key, value in GPU_FP32_TOLERANCES.items()]
    details: dict[str, Any] = {"batch_sizes": list(ORT_BATCH_SIZES), "images": ORT_IMAGES,
                               "tolerances": GPU_FP32_TOLERANCES, "flavors": {}}
    lines, failed, ran = [], False, False
    for flavor in FLAVORS:
        path = run_dir / f"model.{flavor}.onnx"
        if not path.is_file():
            details["flavors"][flavor] = {"status": "skipped", "reason": f"{path} not found: tokengate export "
                                                                         f"{run_dir} --flavor {flavor}"}
            lines.append(f"{flavor} skipped (not exported)")
            continue
        if remaining() < 30:
            details["flavors"][flavor] = {"status": "skipped", "reason": "out of the time budget"}
            lines.append(f"{flavor} skipped (time)")
            continue
        try:
            report = validate(path, ORT_BATCH_SIZES, "ort-cuda", limit=ORT_IMAGES, show_progress=False,
                              overrides=overrides)
        except TokenGateError as exc:
            details["flavors"][flavor] = {"status": "error", "reason": str(exc)}
            lines.append(f"{flavor} error")
            failed = True
            continue
        ran = True
        worst_b1 = max(r["max_abs_logit_diff_vs_b1"] or 0.0 for r in report["results"].values())
        worst_torch = max(r["max_abs_diff_vs_torch"] or 0.0 for r in report["results"].values())
        flips = sum(r["flips_vs_b1"] for r in report["results"].values())
        details["flavors"][flavor] = {"status": "passed" if report["passed"] else "failed",
                                      "max_abs_vs_b1": worst_b1, "max_abs_vs_torch": worst_torch, "flips": flips,
                                      "failures": report["failures"], "results": report["results"]}
        failed = failed or not report["passed"]
        lines.append(f"{flavor} {'ok' if report['passed'] else 'FAILED'} (vs b1 {worst_b1:.1e}, vs torch "
                     f"{worst_torch:.1e}, {flips} flips)")
    if not ran and not failed:
        return Part("skipped", "; ".join(lines), details)
    return Part("failed" if failed else "passed", "; ".join(lines), details)


def part_torch_gpu(config: Path, rounds: int = 7, iters: int = 20) -> Part:
    """Dense vs combined (sliced heads/MLP + token gates) DeiT-S, fp16, timed interleaved, as median ratios."""
    import copy

    import torch

    from pipeline.bench.prepare import fit_keep_ratios, fraction_structure
    from pipeline.config import load_config
    from pipeline.models import GatedViT, build_teacher
    from pipeline.models.build import resolve_stages

    cfg = load_config(config)
    torch.manual_seed(cfg.bench.seed)
    dense = build_teacher(cfg).eval()
    vit = copy.deepcopy(dense.vit)
    fraction_structure(dense, cfg.bench.heads_fraction, cfg.bench.mlp_fraction).apply(vit)
    combined = GatedViT(vit, stages=resolve_stages(cfg, len(vit.blocks)), min_keep=cfg.gates.min_keep,
                        dropped_tokens=cfg.gates.dropped_tokens).eval().cuda()
    shape = (cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size)
    fit_images = torch.randn(64, *shape, device="cuda")  # random weights: any images fit the keep ratios alike
    fit_keep_ratios(combined, fit_images, cfg.bench.keep_ratios)
    models = {"dense": dense.cuda().half(), "combined": combined.half()}

    def time_ms(model: torch.nn.Module, images: torch.Tensor) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            model.forward_dropped(images)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters

    details: dict[str, Any] = {"config": str(config), "precision": "fp16", "rounds": rounds, "iters": iters}
    with torch.inference_mode():
        for batch in (1, 64):
            images = torch.randn(batch, *shape, device="cuda", dtype=torch.float16)
            for model in models.values():
                time_ms(model, images)  # warm-up: kernels chosen, caches filled
            per_round = {name: [] for name in models}
            for _ in range(rounds):  # interleaved: clocks and neighbours affect both alike
                for name, model in models.items():
                    per_round[name].append(time_ms(model, images))
            ratios = [d / c for d, c in zip(per_round["dense"], per_round["combined"])]
            details[f"batch_{batch}"] = {
                "dense_ms": round(statistics.median(per_round["dense"]), 3),
                "combined_ms": round(statistics.median(per_round["combined"]), 3),
                "speedup": round(statistics.median(ratios), 3),
                "images_per_s": {n: round(batch * 1000.0 / statistics.median(t), 1) for n, t in per_round.items()}}
    summary = ", ".join(f"batch {b}: combined {details[f'batch_{b}']['speedup']:.2f}x dense "
                        f"({details[f'batch_{b}']['combined_ms']:.2f} vs {details[f'batch_{b}']['dense_ms']:.2f} ms)"
                        for b in (1, 64))
    return Part("measured", summary + " (DeiT-S geometry, random weights, fp16)", details)


def engine_builders() -> list[str]:
    """The importable engine builders, the one part_tensorrt uses first."""
    from pipeline.build.runtimes import RTX, TENSORRT, available

    return [name for name in (TENSORRT, RTX) if available(name)]


def part_tensorrt(run_dir: Path, remaining: Callable[[], float]) -> Part:
    """Build the capped flavor with whichever builder is importable, run it, compare with ONNX Runtime."""
    have = engine_builders()
    if not have:
        return skipped("neither TensorRT (tensorrt) nor TensorRT-RTX (tensorrt_rtx) is importable here")
    capped = run_dir / "model.capped.onnx"
    if not capped.is_file():
        return skipped(f"{capped} not found: make engine (or tokengate export {run_dir} --flavor capped)")
    if remaining() < 60:
        return skipped("out of the time budget")
    import numpy as np

    from pipeline.build.run_build import build_engine
    from pipeline.runners.factory import make_runner

    builder = have[0]
    result = build_engine(capped, target="auto", precision="fp32", batch="1,8,64", runtime=builder,
                          out=run_dir / f"gpu-check.capped.{builder}.fp32.engine")
    engine_runner = make_runner(result.engine)
    try:
        ort_runner = make_runner(capped, "ort-cuda")
    except Exception:  # noqa: BLE001 - no CUDA EP: the CPU one is as good a reference
        ort_runner = make_runner(capped, "ort-cpu")
    from polygraphy.comparator import Comparator

    from pipeline.runners.compare import accuracy_gaps, quiet

    shape, batches = tuple(result.info.input_shape), (1, 8, 64)
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.standard_normal((batch, *shape)).astype(np.float32)} for batch in batches]
    with quiet():
        outputs = Comparator.run([engine_runner.polygraphy, ort_runner.polygraphy], data_loader=feeds)
    found = accuracy_gaps(outputs, {"logits": GPU_FP32_TOLERANCES["tol_vs_torch"]})
    gaps = {batch: gap.max_abs for batch, gap in zip(batches, found)}
    worst = max(gaps.values())
    ok = worst <= GPU_FP32_TOLERANCES["tol_vs_torch"]
    details = {"builder": builder, "version": result.info.runtime_version, "engine": str(result.engine),
               "reference": ort_runner.runtime, "max_abs_diff": gaps, "tolerance": GPU_FP32_TOLERANCES["tol_vs_torch"]}
    return Part("passed" if ok else "failed", f"{builder} {result.info.runtime_version} capped fp32 engine vs "
                f"{ort_runner.runtime}: max |diff| {worst:.1e} (tol {GPU_FP32_TOLERANCES['tol_vs_torch']:g})", details)


def guarded(body: Callable[[], Part]) -> Part:
    """A part that raises is recorded as an error with its message; the other parts still run."""
    started = time.time()
    try:
        part = body()
    except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' results
        part = Part("error", f"{type(exc).__name__}: {exc}"[:400])
    part.seconds = round(time.time() - started, 1)
    return part


def run_all(run_dir: Path, config: Path, budget: float = BUDGET_S) -> dict:
    """The report: GPU, versions and every part. Without a GPU, every part is skipped and nothing is started."""
    gpu = gpu_info()
    report: dict[str, Any] = {"schema": SCHEMA_VERSION, "gpu": gpu, "versions": versions(), "parts": {}}
    if gpu is None:
        for name in PARTS:
            report["parts"][name] = asdict(skipped("no NVIDIA GPU found (nvidia-smi missing or lists none)"))
        return report
    try:
        import torch

        cuda_ok = torch.cuda.is_available()
    except ImportError:
        cuda_ok = False
    deadline = time.time() + budget
    builders = engine_builders()
    if builders:  # Polygraphy binds one TensorRT per process when first imported: the one part_tensorrt runs
        from pipeline.runners.tensorrt import bind_polygraphy

        bind_polygraphy(builders[0])

    def remaining() -> float:
        return deadline - time.time()

    from pipeline.cuda_kernels import DEFAULT_LIBRARY  # the library the kernel tests load: make plugins' build

    library, build_dir = DEFAULT_LIBRARY, DEFAULT_LIBRARY.parent
    parts: dict[str, Part] = {}
    parts["kernels"] = guarded(lambda: part_kernels(gpu, remaining, build_dir))
    parts["sanitizer"] = guarded(lambda: part_sanitizer(remaining, parts["kernels"]))
    if cuda_ok:
        parts["kernel_timing"] = guarded(lambda: part_kernel_timing(parts["kernels"], library))
    else:
        parts["kernel_timing"] = skipped("torch sees no CUDA device (torch.cuda.is_available() is False)")
    parts["ort_cuda"] = guarded(lambda: part_ort_cuda(run_dir, remaining))
    if cuda_ok and remaining() > 30:
        parts["torch_gpu"] = guarded(lambda: part_torch_gpu(config))
    else:
        parts["torch_gpu"] = skipped("torch sees no CUDA device" if not cuda_ok else "out of the time budget")
    parts["tensorrt"] = guarded(lambda: part_tensorrt(run_dir, remaining))
    report["parts"] = {name: asdict(parts[name]) for name in PARTS}
    return report


def table(report: dict) -> str:
    """The short markdown table: the machine, then one row per part."""
    gpu, v = report["gpu"], report["versions"]
    machine = (f"{gpu['name']}, driver {gpu['driver']}, sm {gpu['compute_capability']}" if gpu else "no NVIDIA GPU")
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    rows = [f"GPU: {machine}  ", f"Versions: {libs}", "", "| part | status | result | s |", "|---|---|---|---|"]
    for name in PARTS:
        part = report["parts"][name]
        rows.append(f"| {name} | {part['status']} | {part['summary'].replace('|', '/')} | {part['seconds']:.0f} |")
    return "\n".join(rows) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "fmnist-tiny", help="the run the ORT/TRT parts use")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "deit-s-224.yaml")
    parser.add_argument("--json", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--table", type=Path, default=Path("gpu-check.md"))
    args = parser.parse_args(argv)
    report = run_all(args.run, args.config)
    write_json(args.json, report)
    text = table(report)
    write_text(args.table, text)
    if report["gpu"] is None:
        print(f"gpu-check: no NVIDIA GPU found, nothing to check; every part is skipped in {args.json}")
        return 0
    print(text)
    print(f"gpu-check: wrote {args.json} and {args.table}")
    return 1 if any(p["status"] in ("failed", "error") for p in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX Runtime sessions for TokenGate models: providers picked, TokenSelect registered, errors made readable.

`ort_session(path)` is the one way to open an exported model. It
- picks execution providers in the order TensorRT EP -> CUDA EP -> CPU, and logs why it skipped the others;
- configures the TensorRT EP with our plugin library, an engine cache in the run directory and fp16 on request;
- registers `tokengate::TokenSelect` (a CPU-only Python op) whenever the graph uses it;
- opens the native flavor instead of the plugin flavor on a GPU EP, which would run TokenSelect on the CPU.

`plan_session` makes every decision without opening anything, so the choice of providers and options is testable
on any machine. onnxruntime is imported lazily: `import pipeline` works without it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.contract import DOMAIN as CUSTOM_DOMAIN
from pipeline.errors import fail

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
# Flavors with the same meaning as the plugin flavor in standard ops, best first: native keeps the adaptive K,
# capped truncates samples above its per-stage cap (its metadata records how often that happened).
STANDARD_SIBLINGS = ("native", "capped")
GPU_INSTALL_HINT = "install onnxruntime-gpu in place of onnxruntime (make setup GPU=1), or pass device='cpu'"


@dataclass(frozen=True)
class SessionPlan:
    """What `ort_session` will open, on which providers with which options, and why."""

    path: Path  # the file to open: the one asked for, or its native/capped sibling on a GPU EP
    requested: Path
    flavor: Optional[str]  # from the TokenGate metadata; None for an ONNX file that is not ours
    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    custom_ops: bool  # the graph has tokengate-domain nodes: register TokenSelect's library
    notes: tuple[str, ...] = field(default=())  # each decision, in words (logged)
    warnings: tuple[str, ...] = field(default=())  # decisions the user should see (logged as warnings)

    @property
    def device(self) -> str:
        return {TRT_EP: "tensorrt", CUDA_EP: "cuda"}.get(self.providers[0], "cpu")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise fail("onnxruntime is not installed", "pip install onnxruntime (CPU) or onnxruntime-gpu") from None
    return onnxruntime


def plugin_library(path: Optional[str | Path] = None) -> Optional[Path]:
    """Our TensorRT plugin library (`make plugins` builds it), or None where it has not been built."""
    from pipeline.build.plugin_lib import DEFAULT_LIBRARY

    candidate = Path(path) if path is not None else DEFAULT_LIBRARY
    if path is not None and not candidate.is_file():
        raise fail(f"plugin library {candidate} does not exist", "build it with `make plugins` or drop plugin_lib")
    return candidate if candidate.is_file() else None


def plan_session(path: str | Path, device: str = "auto", fp16: bool = False,
                 plugin_lib: Optional[str | Path] = None) -> SessionPlan:
    """Decide providers, options, custom ops and the file to open; nothing is loaded into ONNX Runtime."""
    if device not in DEVICES:
        raise fail(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    ort = import_onnxruntime()
    path = Path(path)
    flavor, domains, info = _describe(path)
    available = set(ort.get_available_providers())
    providers, notes = _choose_providers(device, available)
    lib = plugin_library(plugin_lib)
    plan = SessionPlan(path=path, requested=path, flavor=flavor, providers=tuple(providers), provider_options=(),
                       custom_ops=CUSTOM_DOMAIN in domains, notes=tuple(notes))
    plan = _avoid_cpu_custom_op(plan)
    options = tuple(_provider_options(p, plan.path, info, fp16, lib) for p in plan.providers)
    notes = list(plan.notes)
    if fp16 and TRT_EP not in plan.providers:
        notes.append(f"fp16 applies to the TensorRT EP only; {plan.providers[0]} runs the fp32 graph")
    if TRT_EP in plan.providers:
        plugins = f"plugin library {lib}" if lib else "no plugin library (make plugins builds it)"
        notes.append(f"TensorRT EP: engine cache {options[0]['trt_engine_cache_path']}, "
                     f"fp16 {'on' if fp16 else 'off'}, {plugins}")
    return replace(plan, provider_options=options, notes=tuple(notes))


def ort_session(path: str | Path, device: str = "auto", fp16: bool = False, threads: int = 0,
                plugin_lib: Optional[str | Path] = None) -> Any:
    """An `onnxruntime.InferenceSession` for a TokenGate model, TokenSelect registered where the graph needs it.

    Args:
        device: auto (TensorRT EP, then CUDA EP, then CPU: the best one installed), cpu, cuda or tensorrt.
        fp16: let the TensorRT EP build fp16 engines (other providers run the fp32 graph as exported).
        threads: intra-op threads of the CPU provider; 0 lets ONNX Runtime decide.
        plugin_lib: our TensorRT plugin library; default plugins/build/libtokengate_plugins.so when built.
    """
    return open_plan(plan_session(path, device, fp16, plugin_lib), threads)


def session_options(threads: int = 0, spin: bool = True, stop_spinning_after_run: bool = False) -> Any:
    """`onnxruntime.SessionOptions` with `threads` intra-op threads (0: ORT's choice) that spin when idle or not.

    `stop_spinning_after_run`: spin during a run (as a deployed session does by default) but stop when it returns,
    so that a session's idle workers do not take the cores of another session run right after it (the bench's
    interleaved rounds)."""
    options = import_onnxruntime().SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if stop_spinning_after_run:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def register_token_select(options: Any) -> None:
    """Make `options` run tokengate::TokenSelect nodes (onnxruntime-extensions' library, our op declared once)."""
    from pipeline.ops.ort_register import register

    options.register_custom_ops_library(register())


def open_plan(plan: SessionPlan, threads: int = 0, options: Any = None) -> Any:
    """Open the session a plan describes, and log what ONNX Runtime actually gave.

    `options`: an `onnxruntime.SessionOptions` the caller configured (profiling, spinning); TokenSelect's library is
    registered into it when the graph needs it.
    """
    ort = import_onnxruntime()
    for note in plan.notes:
        log.info(note)
    for warning in plan.warnings:
        log.warning(warning)
    options = options if options is not None else ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if plan.custom_ops:
        register_token_select(options)
    for opts in plan.provider_options:
        if "trt_engine_cache_path" in opts:
            Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    session = open_session(plan.path, plan.providers, plan.provider_options, options)
    got = session.get_providers()
    if got[0] != plan.providers[0]:
        log.warning(f"asked ONNX Runtime for {plan.providers[0]} but it gave {got[0]}: the provider failed to "
                    "start (check its CUDA / TensorRT libraries)")
    log.info(f"{plan.path.name}: running on {', '.join(got)}")
    return session


def open_session(path: str | Path, providers: Sequence[str] = (CPU_EP,),
                 provider_options: Optional[Sequence[dict]] = None, options: Any = None) -> Any:
    """`onnxruntime.InferenceSession` as is, with ORT's load failures turned into one-line errors.

    Nothing is registered here: this is what any third-party tool sees. A plugin-flavor file therefore fails, and
    the error says to open it with `ort_session`.
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise fail(f"{path} does not exist", "export it first: tokengate export RUN --flavor ...")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers),
                                    provider_options=None if provider_options is None else list(provider_options))
    except Exception as exc:  # ORT's own exception types live in a pybind module; anything else is a real bug
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise _load_error(path, str(exc)) from None


def _load_error(path: Path, message: str) -> Exception:
    if "is not a registered function/op" in message and f"{CUSTOM_DOMAIN}:" in message:
        return fail(f"{path} uses the custom op tokengate::TokenSelect, which this ONNX Runtime session has not "
                    "registered", "open it with pipeline.runtime.ort_session(path), which registers it, or use the "
                    "native flavor (model.native.onnx)")
    if "Protobuf parsing failed" in message or "INVALID_PROTOBUF" in message:
        return fail(f"{path} is not an ONNX model", "pass a model.<flavor>.onnx written by `tokengate export`")
    detail = message.split(" failed:", 1)[-1].strip().splitlines()[0]
    return fail(f"ONNX Runtime cannot load {path}: {detail}", "re-export it with `tokengate export RUN`")


def _describe(path: Path) -> tuple[Optional[str], set[str], Any]:
    """(flavor or None, opset domains, ExportInfo or None) from the file itself."""
    import onnx

    from pipeline.errors import TokenGateError
    from pipeline.export.metadata import read_info

    if not path.is_file():
        raise fail(f"{path} does not exist", "export it first: tokengate export RUN --flavor ...")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for bytes that are not a model
        raise fail(f"{path} is not an ONNX model ({type(exc).__name__})", "pass a file written by `tokengate export`") \
            from None
    domains = {o.domain for o in proto.opset_import}
    try:
        info = read_info(path, proto)
    except TokenGateError:  # not one of ours: still runnable, just without run-dir extras
        return None, domains, None
    return info.flavor, domains, info


def _choose_providers(device: str, available: set[str]) -> tuple[list[str], list[str]]:
    """Providers in the order TensorRT EP -> CUDA EP -> CPU, and why each missing one was skipped."""
    asked = {"auto": (TRT_EP, CUDA_EP), "tensorrt": (TRT_EP, CUDA_EP), "cuda": (CUDA_EP,), "cpu": ()}[device]
    providers, notes = [], []
    for ep in (TRT_EP, CUDA_EP):
        if ep not in asked:
            notes.append(f"{ep} skipped: not asked (device={device})")
        elif ep in available:
            providers.append(ep)
        elif device == "auto" or (device == "tensorrt" and ep == CUDA_EP):
            notes.append(f"{ep} skipped: not installed (this onnxruntime build has {', '.join(sorted(available))})")
        else:
            raise fail(f"device={device!r} needs {ep}, which this onnxruntime build does not have "
                       f"(it has {', '.join(sorted(available))})", GPU_INSTALL_HINT)
    providers.append(CPU_EP)
    return providers, notes


def _avoid_cpu_custom_op(plan: SessionPlan) -> SessionPlan:
    """On a GPU EP, open the standard-op flavor next to a plugin-flavor file.

    The Python op runs on the CPU only. ONNX Runtime would place each TokenSelect node on the CPU EP and copy its
    inputs device -> host and outputs host -> device, with a stream sync and a Python call per stage. The native
    flavor computes the same thing in standard ops that stay on the GPU. The TensorRT EP does not help here: it
    offers the plugins of `trt_extra_plugin_lib_paths` as custom ops of the domain "trt.plugins" only, and our
    exported node is `tokengate::TokenSelect`, so the node would still land on the CPU.
    """
    first = plan.providers[0]
    if not plan.custom_ops or first == CPU_EP:
        return plan
    for flavor in STANDARD_SIBLINGS:
        sibling = plan.path.with_name(f"model.{flavor}.onnx")
        if sibling.is_file() and _describe(sibling)[0] == flavor:
            why = (f"{plan.path.name}'s TokenSelect is a CPU-only Python op, so on {first} every stage would copy "
                   f"device -> host -> device; opening {sibling.name} (the same model in standard ops) instead")
            if flavor == "capped":
                why += " (static K per stage: samples above a cap are truncated, see its truncation_rate)"
            return replace(plan, path=sibling, flavor=flavor, custom_ops=False, warnings=plan.warnings + (why,))
    why = (f"{plan.path.name}'s TokenSelect is a CPU-only Python op and no model.native.onnx lies next to it: "
           f"{first} runs the rest and ONNX Runtime copies each stage's tokens to the CPU and back "
           "(export the native flavor to avoid it: tokengate export RUN --flavor native)")
    return replace(plan, warnings=plan.warnings + (why,))


def _provider_options(provider: str, path: Path, info: Any, fp16: bool, lib: Optional[Path]) -> dict[str, str]:
    if provider == CUDA_EP:  # fp32 means fp32: TF32 matmuls (the CUDA EP's default) miss the 1e-4 parity target
        return {"use_tf32": "0"}
    if provider != TRT_EP:
        return {}
    cache = _run_dir(path, info) / "trt_cache"
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
               "trt_fp16_enable": "True" if fp16 else "False"}
    if lib is not None:
        options["trt_extra_plugin_lib_paths"] = str(lib)
    return options


def _run_dir(path: Path, info: Any) -> Path:
    """The run directory the metadata records, where it still exists; else the model's own directory."""
    recorded = Path(info.run_dir) if info is not None and info.run_dir else None
    return recorded if recorded is not None and recorded.is_dir() else path.resolve().parent

"""One callable per bench model and runtime: images (float32 numpy) in, (logits, kept tokens or None) out.

ONNX Runtime sessions are opened through `pipeline.runtime` (provider choice, TokenSelect registration) with two
bench-specific session options: intra-op threads that sleep instead of spinning after a run (`spin=False`), so that
one model's idle workers do not steal the cores of the next model in an interleaved round; and ORT's profiler,
for TokenSelect's share of run time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipeline.errors import fail

Call = Callable[[np.ndarray], tuple[np.ndarray, Optional[np.ndarray]]]
ORT_DEVICES = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}


def bench_session_options(threads: int = 0, spin: bool = False) -> Any:
    """Session options of every bench session: `threads` intra-op threads (0: ORT's choice), spinning off unless
    asked (see the module docstring)."""
    from pipeline.runtime import import_onnxruntime

    options = import_onnxruntime().SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class OrtCall:
    """An ONNX Runtime session as a bench callable."""

    def __init__(self, path: Path, runtime: str = "ort-cpu", threads: int = 0, spin: bool = False,
                 profile_prefix: Optional[str] = None):
        from pipeline.runtime import open_plan, plan_session

        plan = plan_session(path, ORT_DEVICES[runtime])
        options = bench_session_options(threads, spin)
        self.runtime, self.threads = runtime, threads
        self.optimized: Optional[Path] = None
        if profile_prefix:  # the profile names the nodes of the graph ORT runs: keep that graph to attribute them
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
            self.optimized = Path(profile_prefix + ".optimized.onnx")
            options.optimized_model_filepath = str(self.optimized)
            options.log_severity_level = 3  # ORT warns that the saved graph is specific to this CPU: it is meant to be
        self.path, self.plan = Path(plan.path), plan
        self.session = open_plan(plan, options=options)  # its threads are set in the options already
        self.input_name = self.session.get_inputs()[0].name
        self.device = plan.device

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        outputs = self.session.run(None, {self.input_name: images})
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def end_profiling(self) -> str:
        return self.session.end_profiling()


class TorchCall:
    """A GatedViT (or its packed forward) under torch.inference_mode, on the CPU or a CUDA device."""

    def __init__(self, model: Any, packed: bool = False, device: str = "cpu"):
        import torch

        from pipeline.bench.packed import PackedForward

        self.torch = torch
        self.device = torch.device(device)
        model = model.eval().to(self.device)
        self.gated = bool(model.stages)
        self.forward = PackedForward(model) if packed and model.stages else model.forward_dropped

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        torch = self.torch
        with torch.inference_mode():
            logits, kept = self.forward(torch.from_numpy(images).to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return logits.float().cpu().numpy(), kept.cpu().numpy() if self.gated else None


class TensorRTCall:
    """A TensorRT engine built from the cached ONNX (pipeline.build), run by pipeline.runners.tensorrt."""

    def __init__(self, path: Path, max_batch: int, precision: str = "fp16"):
        try:
            from pipeline.build.run_build import build_engine
            from pipeline.runners.tensorrt import TensorRTRunner
        except ImportError as exc:
            raise fail(f"the TensorRT runtime is not available here ({exc})",
                       "run on a machine with TensorRT and an NVIDIA GPU, or use --runtime ort-cpu") from None
        result = build_engine(path, precision=precision, batch=f"1,{max_batch},{max_batch}")
        self.runner = TensorRTRunner(result.engine)
        self.device = "tensorrt"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
        out = self.runner.infer(images)
        return out.logits, out.kept_tokens


def torch_device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"torch {torch.__version__} on {torch.cuda.get_device_name(torch.device(device))}"
    return f"torch {torch.__version__} on CPU ({torch.get_num_threads()} threads)"

"""`make_runner(artifact, runtime)`: the one place that maps an artifact and a runtime name to a runner."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import fail
from pipeline.runners.base import Runner, runtime_name

ORT_RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt")


def artifact_kind(artifact: str | Path) -> str:
    """run (a run directory or a checkpoint in one), onnx or engine."""
    path = Path(artifact)
    if not path.exists():
        raise fail(f"{path} does not exist", "pass a run directory, a model.<flavor>.onnx or an .engine file")
    if path.is_dir() or path.suffix in (".safetensors", ".pth", ".pt"):
        return "run"
    if path.suffix in (".onnx", ".engine"):
        return path.suffix[1:]
    raise fail(f"{path} is neither a run directory, an .onnx nor an .engine file",
               "pass a run directory, a model.<flavor>.onnx or an .engine file")


def default_runtime(artifact: str | Path) -> str:
    return {"run": "torch", "onnx": "ort-cpu", "engine": "tensorrt"}[artifact_kind(artifact)]


def make_runner(artifact: str | Path, runtime: Optional[str] = None, **kwargs) -> Runner:
    """A runner for `artifact` on `runtime` (default: the artifact's natural runtime); kwargs go to the runner."""
    kind = artifact_kind(artifact)
    runtime = runtime_name(runtime) if runtime else default_runtime(artifact)
    if kind == "run" and runtime == "torch":
        from pipeline.runners.torch_runner import TorchRunner

        return TorchRunner(artifact, **kwargs)
    if kind == "onnx" and runtime in ORT_RUNTIMES:
        from pipeline.runners.ort_runner import OrtRunner

        return OrtRunner(artifact, runtime, **kwargs)
    if kind == "engine" and runtime == "tensorrt":
        try:  # TensorRT is optional: import it only for engines, and say so in one line where it is missing
            from pipeline.runners.tensorrt import TensorRTRunner

            return TensorRTRunner(artifact, **kwargs)
        except ImportError as exc:
            raise fail(f"the TensorRT runner is not available here ({exc})",
                       "install TensorRT's Python package (make setup GPU=1) on a machine with an NVIDIA GPU") from None
    fixes = {"run": "runs through torch; for ONNX Runtime pass RUN/model.<flavor>.onnx",
             "onnx": f"runs through {', '.join(ORT_RUNTIMES)}; for tensorrt build an engine first (tokengate build)",
             "engine": "runs through tensorrt only"}
    raise fail(f"{artifact} cannot run on {runtime}", f"a {kind} artifact {fixes[kind]}")

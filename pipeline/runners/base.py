"""The runner interface and the runtime names every command accepts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from pipeline.errors import fail

# One set of names everywhere (validate, bench, engine): see `runtime_name` for the accepted aliases.
RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
_ALIASES = {"onnxruntime": "ort-cpu", "ort": "ort-cpu", "trt": "tensorrt", "pytorch": "torch"}


def runtime_name(name: str) -> str:
    """Canonical runtime name, or a clear error listing the valid ones."""
    canonical = _ALIASES.get(name, name)
    if canonical not in RUNTIMES:
        raise fail(f"unknown runtime {name!r}", f"use one of {', '.join(RUNTIMES)} (onnxruntime = ort-cpu)")
    return canonical


@dataclass(frozen=True)
class RunnerOutput:
    logits: np.ndarray  # float32 [B, num_classes]
    kept_tokens: Optional[np.ndarray]  # int32 [B, S]: tokens (prefix included) after each stage; None for dense


class Runner(Protocol):
    """Runs one artifact on one runtime."""

    runtime: str  # one of RUNTIMES
    artifact: str  # what it runs (a run dir, an .onnx or an .engine path)

    def infer(self, images: np.ndarray) -> RunnerOutput:
        """images: float32 [B, C, H, W], already normalised."""
        ...

"""The runner interface and the runtime names every command accepts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Protocol

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


# The tensor names of every exported flavor, which Polygraphy runners and `polygraphy run` report outputs by.
INPUT_NAME, LOGITS, KEPT = "images", "logits", "kept_tokens"


@dataclass(frozen=True)
class RunnerOutput:
    logits: np.ndarray  # float32 [B, num_classes]
    kept_tokens: Optional[np.ndarray]  # int32 [B, S]: tokens (prefix included) after each stage; None for dense


def to_output(outputs: Mapping[str, np.ndarray]) -> RunnerOutput:
    """A Polygraphy runner's outputs (name -> array) as a RunnerOutput."""
    return RunnerOutput(logits=outputs[LOGITS], kept_tokens=outputs.get(KEPT))


class Runner(Protocol):
    """Runs one artifact on one runtime.

    `polygraphy` is the same model as an inactive Polygraphy runner (feed {"images": ...}, outputs by tensor name)
    for `polygraphy.comparator.Comparator.run`, which activates it for the run.
    """

    runtime: str  # one of RUNTIMES
    artifact: str  # what it runs (a run dir, an .onnx or an .engine path)
    polygraphy: Any  # a polygraphy.backend.base.BaseRunner

    def infer(self, images: np.ndarray) -> RunnerOutput:
        """images: float32 [B, C, H, W], already normalised."""
        ...

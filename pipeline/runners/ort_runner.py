"""The ONNX Runtime runner: any exported flavor through `pipeline.runtime.ort_session` (CPU, CUDA or TensorRT EP)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runners.base import RunnerOutput, runtime_name
from pipeline.runners.inputs import check_batch

DEVICE_OF = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}


class OrtRunner:
    """One InferenceSession; the input shape and flavor come from the model's TokenGate metadata.

    `path` is the file actually opened: on a GPU provider a plugin-flavor file gives way to its native sibling.
    """

    def __init__(self, path: str | Path, runtime: str = "ort-cpu", fp16: bool = False, threads: int = 0):
        from pipeline.export.metadata import read_info
        from pipeline.runtime import open_plan, plan_session

        self.runtime = runtime_name(runtime)
        if self.runtime not in DEVICE_OF:
            raise ValueError(f"OrtRunner runs {sorted(DEVICE_OF)}, not {self.runtime}")
        self.artifact = str(path)
        self.info = read_info(path)  # a file that is not ours fails here, with the reason
        self.plan = plan_session(path, DEVICE_OF[self.runtime], fp16)
        self.session = open_plan(self.plan, threads)
        self.path = self.plan.path
        self.input_shape = tuple(self.info.input_shape)
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, images: np.ndarray) -> RunnerOutput:
        outputs = self.session.run(None, {self.input_name: check_batch(images, self.input_shape)})
        return RunnerOutput(logits=outputs[0], kept_tokens=outputs[1] if len(outputs) > 1 else None)

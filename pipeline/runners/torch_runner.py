"""The PyTorch runner: a run's student (or teacher) in hard-drop inference, the reference the others match.

`TorchRunner.polygraphy` is the same model as a Polygraphy runner, so a Comparator can put PyTorch beside ONNX
Runtime and TensorRT. Ours, not Polygraphy's PytRunner: that one moves every input to CUDA and calls the module's
forward, and the reference runs `forward_dropped` on the CPU.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from pipeline.errors import fail
from pipeline.runners.base import INPUT_NAME, KEPT, LOGITS, RunnerOutput, to_output
from pipeline.runners.inputs import check_batch


class TorchRunner:
    """GatedViT.forward_dropped on CPU or CUDA.

    Args:
        artifact: a run directory, or a checkpoint file inside one (student.safetensors or teacher.safetensors).
        model: student or teacher; a checkpoint file decides for itself.
        caps: per-stage K, to mirror the capped flavor (static K with truncation) instead of the adaptive op.
        device: auto (CUDA where torch sees it), cpu or cuda.
        threads: CPU threads while this runner infers (restored afterwards); 0 keeps torch's setting. A reference
            that runs beside another runtime should use 1: OpenMP threads that share busy cores with ONNX
            Runtime's spinning pool wait at every barrier (on 2 busy cores: 1 s instead of 30 ms a batch).
    """

    runtime = "torch"

    def __init__(self, artifact: str | Path, model: str = "student", caps: Optional[Sequence[int]] = None,
                 device: str = "auto", threads: int = 0):
        import torch

        from pipeline.config import load_run_config
        from pipeline.models import load_student, load_teacher
        from pipeline.models.build import STUDENT_FILE, TEACHER_FILE

        path = Path(artifact)
        if not path.exists():
            raise fail(f"{path} does not exist", "pass a run directory written by `tokengate train`")
        run_dir, filename = (path, STUDENT_FILE if model == "student" else TEACHER_FILE) if path.is_dir() else \
            (path.parent, path.name)
        cfg = load_run_config(run_dir)
        self.model_kind = "teacher" if filename == TEACHER_FILE else "student"
        net = load_teacher(run_dir, cfg) if self.model_kind == "teacher" else load_student(run_dir, cfg, filename)
        if caps is not None:
            net = net.with_inference("capped", caps)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise fail("runtime torch on cuda needs a GPU that torch can see", "use device='cpu'")
        self.artifact, self.device, self.config, self.threads = str(artifact), torch.device(device), cfg, threads
        self.model = net.eval().to(self.device)
        self.input_shape = (cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size)
        self.polygraphy = PolygraphyTorchRunner(self, name=f"torch:{path.name}:{self.model_kind}")

    def infer(self, images: np.ndarray) -> RunnerOutput:
        return to_output(self.run(check_batch(images, self.input_shape)))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by tensor name (as the exported graph names them) for a checked batch."""
        import torch

        batch = torch.from_numpy(images).to(self.device)
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                logits, lengths = self.model.forward_dropped(batch)
        finally:
            torch.set_num_threads(previous)
        out = OrderedDict([(LOGITS, logits.float().cpu().numpy())])
        if self.model.stages:
            out[KEPT] = lengths.cpu().numpy().astype(np.int32)
        return out


class PolygraphyTorchRunner(BaseRunner):
    """A TorchRunner behind Polygraphy's runner interface: feed {"images": [B, C, H, W]}, outputs by name."""

    def __init__(self, runner: TorchRunner, name: Optional[str] = None):
        super().__init__(name=name, prefix="tokengate-torch-runner")
        self.runner = runner

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(INPUT_NAME, np.float32, ("batch", *self.runner.input_shape))

    def infer_impl(self, feed_dict: dict) -> dict[str, np.ndarray]:
        images = check_batch(feed_dict[INPUT_NAME], self.runner.input_shape)
        start = time.perf_counter()
        outputs = self.runner.run(images)
        self.inference_time = time.perf_counter() - start
        return outputs

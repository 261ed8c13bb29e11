"""The ONNX Runtime runner: any exported flavor through `pipeline.runtime` (CPU, CUDA or TensorRT EP), as a
Polygraphy OnnxrtRunner over the session our runtime opens (TokenSelect registered, our threads and spinning)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.runners.base import RunnerOutput, runtime_name
from pipeline.runners.inputs import check_batch

DEVICE_OF = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}


class OrtRunner:
    """One InferenceSession; the input shape and flavor come from the model's TokenGate metadata.

    `path` is the file actually opened: on a GPU provider a plugin-flavor file gives way to its native sibling.
    `polygraphy` is an OnnxrtRunner over the same session. `infer` calls the session itself: Polygraphy's infer
    inspects the call stack on every call (its caller checks), a cost the bench would time as the model's.

    Args:
        threads: intra-op threads (0: ONNX Runtime's choice).
        spin: let idle intra-op threads spin (ONNX Runtime's default).
        stop_spinning_after_run: stop that spinning when a run returns. The bench turns it on, so that one model's
            spinning workers do not take the cores of the next model in an interleaved round, while each run
            spins as a deployed session does.
        profile_prefix: run under ONNX Runtime's profiler, and keep the graph it runs at `<prefix>.optimized.onnx`
            (the profile names that graph's nodes).
        ours: refuse a file without TokenGate metadata (its config and input shape are unknown). Off for the bench's
            region timing, which also runs pieces of graphs; their inputs are then not checked.
    """

    def __init__(self, path: str | Path, runtime: str = "ort-cpu", fp16: bool = False, threads: int = 0,
                 spin: bool = True, stop_spinning_after_run: bool = False, profile_prefix: Optional[str] = None,
                 ours: bool = True):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        from pipeline.export.metadata import read_info
        from pipeline.runtime import open_plan, plan_session, session_options

        self.runtime = runtime_name(runtime)
        if self.runtime not in DEVICE_OF:
            raise ValueError(f"OrtRunner runs {sorted(DEVICE_OF)}, not {self.runtime}")
        self.artifact, self.threads = str(path), threads
        self.info = read_info(path) if ours else None  # a file that is not ours fails here, with the reason
        self.plan = plan_session(path, DEVICE_OF[self.runtime], fp16)
        options = session_options(threads, spin, stop_spinning_after_run)
        self.optimized: Optional[Path] = None
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
            self.optimized = Path(profile_prefix + ".optimized.onnx")
            options.optimized_model_filepath = str(self.optimized)
            options.log_severity_level = 3  # ORT warns that the saved graph is specific to this CPU: it is meant to be
        self.session = open_plan(self.plan, options=options)
        self.path = self.plan.path
        self.input_shape = None if self.info is None else tuple(self.info.input_shape)
        self.input_name = self.session.get_inputs()[0].name
        self.polygraphy = OnnxrtRunner(self.session, name=f"{self.runtime}:{Path(self.path).name}")

    def infer(self, images: np.ndarray) -> RunnerOutput:
        feed = images if self.input_shape is None else check_batch(images, self.input_shape)
        outputs = self.session.run(None, {self.input_name: feed})
        return RunnerOutput(logits=outputs[0], kept_tokens=outputs[1] if len(outputs) > 1 else None)

    def end_profiling(self) -> str:
        """Stop the profiler; returns the path of its JSON trace."""
        return self.session.end_profiling()

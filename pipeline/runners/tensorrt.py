"""TensorRT runner: a built engine (TensorRT or TensorRT-RTX, as its engine.json says) run by Polygraphy's TrtRunner.

Everything that can be refused is refused before the engine is deserialized, from its engine.json: a changed or
truncated file, a missing runtime, another runtime version, another GPU. Batches outside the profile are refused
with the range, or split into chunks when asked (`auto_chunk=True`). TrtRunner does the rest: device buffers, the
stream, and outputs whose size TensorRT learns only while it runs (data-dependent shapes, through its
IOutputAllocator).

Polygraphy binds either tensorrt or tensorrt_rtx once per process, when its TensorRT backend is first imported
(POLYGRAPHY_USE_TENSORRT_RTX); `bind_polygraphy` makes that choice for the engine's runtime, or refuses in one line
once the backend is bound to the other.
"""
from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.build import engine_info, plugin_lib, targets
from pipeline.build.network import INPUT_NAME, make_logger
from pipeline.build.profile import BatchProfile, chunks
from pipeline.build.runtimes import LABELS, RTX, import_runtime, runtime_name
from pipeline.errors import fail
from pipeline.runners.base import KEPT, LOGITS, RunnerOutput
from pipeline.runners.inputs import check_batch
from pipeline.runners.compare import quiet

__all__ = ["TensorRTRunner", "bind_polygraphy", "chunks"]

RTX_SWITCH = "POLYGRAPHY_USE_TENSORRT_RTX"


def bind_polygraphy(runtime: str) -> None:
    """Make Polygraphy's TensorRT backend use `runtime`'s module (tensorrt or tensorrt_rtx) in this process."""
    rtx = runtime_name(runtime) == RTX
    if "polygraphy" not in sys.modules:
        os.environ[RTX_SWITCH] = "1" if rtx else "0"
    from polygraphy import config

    if "polygraphy.backend.trt" not in sys.modules:  # its modules bind tensorrt or tensorrt_rtx when first imported
        config.USE_TENSORRT_RTX = rtx
    if config.USE_TENSORRT_RTX != rtx:
        bound = LABELS[RTX] if config.USE_TENSORRT_RTX else LABELS["tensorrt"]
        raise fail(f"Polygraphy in this process already runs {bound}, and this is a {LABELS[runtime_name(runtime)]} "
                   "engine (Polygraphy picks one of them per process, when its TensorRT backend is first imported)",
                   f"run it in a process started with {RTX_SWITCH}={'1' if rtx else '0'}")


def merge(parts: list[dict[str, np.ndarray]]) -> RunnerOutput:
    """Chunks' outputs, in order, as one RunnerOutput."""
    logits = np.concatenate([p[LOGITS] for p in parts]).astype(np.float32, copy=False)
    kept = [p[KEPT] for p in parts if KEPT in p]
    return RunnerOutput(logits, np.concatenate(kept).astype(np.int32, copy=False) if kept else None)


class TensorRTRunner:
    """Runs `model.<flavor>.<target>.<precision>.engine` on this machine's GPU.

    `polygraphy` is an inactive TrtRunner over the engine, for a Comparator; `infer` runs its own active one (each
    activation holds an execution context of its own).
    """

    runtime = "tensorrt"

    def __init__(self, engine_path: str | Path, plugin_lib: Optional[str | Path] = None, auto_chunk: bool = False):
        path = Path(engine_path)
        self.artifact = str(path)
        self.auto_chunk = auto_chunk
        self.info = engine_info.read_info(path)
        self.profile = BatchProfile(**self.info.profile)
        if self.info.flavor == "plugin" and self.info.runtime != "tensorrt":  # RTX aborts the process on our plugin
            raise fail(f"{path} is a plugin-flavor engine for {self.info.runtime}, which cannot run plugins",
                       "build the plugin flavor with TensorRT (--runtime tensorrt)")
        data = engine_info.check_file(path, self.info)
        trt = import_runtime(self.info.runtime)
        engine_info.check_runtime(self.info, self.info.runtime, str(trt.__version__), path)
        engine_info.check_target(self.info, targets.detect_target(), path)
        bind_polygraphy(self.info.runtime)
        self._load(trt, path, data, plugin_lib)

    def _plugin(self, trt: Any, override: Optional[str | Path]) -> None:
        built_with = self.info.plugin_lib or {}
        library = plugin_lib.check_library(override or built_with.get("path"))
        if built_with and library.sha256 != built_with.get("sha256"):
            print(f"note: {library.path} is not the plugin library {Path(self.artifact).name} was built with "
                  "(another sha256); its ABI and plugin version match, so it is used", file=sys.stderr)
        plugin_lib.register(trt, library)

    def _load(self, trt: Any, path: Path, data: bytes, override: Optional[str | Path]) -> None:
        from polygraphy.backend.trt import TrtRunner
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException

        if self.info.flavor == "plugin":
            self._plugin(trt, override)
        self._trt = trt
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)  # our logger: its errors go into our messages
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise fail(f"{path} could not be deserialized: {self._why_invalid(data)}",
                       f"rebuild it: tokengate build {self.info.onnx['path']} --target {self.info.target} "
                       f"--precision {self.info.precision} --runtime {self.info.runtime}")
        low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        if (low[0], high[0]) != (self.profile.min, self.profile.max):
            raise fail(f"{path} takes batches {low[0]}..{high[0]}, and its engine.json says {self.profile.min}.."
                       f"{self.profile.max}", "rebuild the engine: its engine.json belongs to another build")
        self.engine = engine
        self._input_dtype = DataType.from_dtype(engine.get_tensor_dtype(INPUT_NAME), "tensorrt").numpy()
        self.polygraphy = TrtRunner(engine, name=f"tensorrt:{path.name}")
        self._active = TrtRunner(engine, name=f"tensorrt:{path.name}:infer")
        try:
            with quiet():
                self._active.activate()
        except PolygraphyException as exc:
            raise fail(f"TensorRT could not create an execution context for {path}: {self._reason(exc)}",
                       "free GPU memory (other processes), or rebuild with a smaller --batch MAX") from None
        weakref.finalize(self, self._active.deactivate)

    def _reason(self, exc: Exception) -> str:
        """Polygraphy's own message where it gives one, else TensorRT's last logged error."""
        text = str(exc).strip()
        return text.splitlines()[0] if text else self._last_error()

    def _last_error(self) -> str:
        return self._logger.errors[-1] if self._logger.errors else "no reason given"

    def _why_invalid(self, data: bytes) -> str:
        """TensorRT's own diagnosis of the plan header where it offers one (10.x's get_engine_validity)."""
        check = getattr(self._runtime, "get_engine_validity", None)
        if check is None:
            return self._last_error()
        try:
            _, diagnostics = check(data[: self._runtime.engine_header_size])
        except Exception:  # noqa: BLE001 - a diagnosis only; the error below stands either way
            return self._last_error()
        members = getattr(getattr(self._trt, "EngineInvalidityDiagnostics", None), "__members__", {})
        found = [name.lower().replace("_", " ") for name, m in members.items() if int(diagnostics) & int(m)]
        return ", ".join(found) + f" ({self._last_error()})" if found else self._last_error()

    def infer(self, images: np.ndarray) -> RunnerOutput:
        images = check_batch(images, self.info.input_shape)  # the same refusals as every other runner
        plan = self.profile.plan(len(images), self.auto_chunk, Path(self.artifact).name)
        return merge([self._run(images[part]) for part in plan])

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from polygraphy.exception import PolygraphyException

        feed = {INPUT_NAME: np.ascontiguousarray(images, dtype=self._input_dtype)}
        try:
            with quiet():
                outputs = self._active.infer(feed, check_inputs=False)
        except PolygraphyException as exc:
            raise RuntimeError(f"TensorRT failed to run {self.artifact}: {self._reason(exc)}") from None
        return {name: np.array(array) for name, array in outputs.items()}  # copies: TrtRunner reuses its buffers

"""TensorRT runner: a built engine (TensorRT or TensorRT-RTX, as its engine.json says) behind the runner interface.

Everything that can be refused is refused before the engine is deserialized, from its engine.json: a changed or
truncated file, a missing runtime, another runtime version, another GPU. Batches outside the profile are refused
with the range, or split into chunks when asked (`auto_chunk=True`). Device memory comes from torch; outputs whose
size TensorRT learns only while it runs (data-dependent shapes) go through an IOutputAllocator.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipeline.build import engine_info, plugin_lib, targets
from pipeline.build.network import INPUT_NAME, make_logger
from pipeline.build.profile import BatchProfile, chunks
from pipeline.build.runtimes import import_runtime
from pipeline.errors import fail
from pipeline.runners.base import RunnerOutput
from pipeline.runners.inputs import check_batch

__all__ = ["TensorRTRunner", "chunks"]

# TensorRT DataType name -> numpy/torch dtype name
_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
           "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class GrowingBuffers:
    """One device buffer per output name, reallocated only when a run needs more bytes than it holds."""

    def __init__(self, allocate: Callable[[int], Any]):
        self.allocate = allocate  # nbytes -> a torch uint8 tensor
        self.buffers: dict[str, Any] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def pointer(self, name: str, nbytes: int) -> int:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self.buffers[name] = self.allocate(max(int(nbytes), 1))
        return buffer.data_ptr()

    def tensor(self, name: str, dtype: Any) -> Any:
        """The output as a typed tensor of the shape TensorRT reported."""
        shape = self.shapes[name]
        count = math.prod(shape)
        return self.buffers[name][: count * dtype.itemsize].view(dtype).reshape(shape)


def make_output_allocator(trt: Any, buffers: GrowingBuffers) -> Any:
    """A trt.IOutputAllocator over `buffers` (subclassed here, as the runtime module is only known at run time)."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)

        def reallocate_output(self, tensor_name: str, memory: Any, size: int, alignment: int) -> int:
            return buffers.pointer(tensor_name, size)  # torch allocations are 512-byte aligned

        def reallocate_output_async(self, tensor_name: str, memory: Any, size: int, alignment: int, stream: int) -> int:
            return buffers.pointer(tensor_name, size)  # allocated on torch's current stream, the one we enqueue on

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            buffers.shapes[tensor_name] = tuple(int(d) for d in shape)

    return OutputAllocator()


def merge(parts: list[dict[str, np.ndarray]]) -> RunnerOutput:
    """Chunks' outputs, in order, as one RunnerOutput."""
    logits = np.concatenate([p["logits"] for p in parts]).astype(np.float32, copy=False)
    kept = [p["kept_tokens"] for p in parts if "kept_tokens" in p]
    return RunnerOutput(logits, np.concatenate(kept).astype(np.int32, copy=False) if kept else None)


class TensorRTRunner:
    """Runs `model.<flavor>.<target>.<precision>.engine` on this machine's GPU."""

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
        self._load(trt, path, data, plugin_lib)

    def _plugin(self, trt: Any, override: Optional[str | Path]) -> None:
        built_with = self.info.plugin_lib or {}
        library = plugin_lib.check_library(override or built_with.get("path"))
        if built_with and library.sha256 != built_with.get("sha256"):
            print(f"note: {library.path} is not the plugin library {Path(self.artifact).name} was built with "
                  "(another sha256); its ABI and plugin version match, so it is used", file=sys.stderr)
        plugin_lib.register(trt, library)

    def _load(self, trt: Any, path: Path, data: bytes, override: Optional[str | Path]) -> None:
        import torch

        if self.info.flavor == "plugin":
            self._plugin(trt, override)
        self._trt, self._torch = trt, torch
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise fail(f"{path} could not be deserialized: {self._why_invalid(data)}",
                       f"rebuild it: tokengate build {self.info.onnx['path']} --target {self.info.target} "
                       f"--precision {self.info.precision} --runtime {self.info.runtime}")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: getattr(torch, _DTYPES[engine.get_tensor_dtype(n).name]) for n in names}
        low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(INPUT_NAME, 0))
        if (low[0], high[0]) != (self.profile.min, self.profile.max):
            raise fail(f"{path} takes batches {low[0]}..{high[0]}, and its engine.json says {self.profile.min}.."
                       f"{self.profile.max}", "rebuild the engine: its engine.json belongs to another build")
        self._context = engine.create_execution_context()
        if self._context is None:
            raise fail(f"TensorRT could not create an execution context for {path}: {self._last_error()}",
                       "free GPU memory (other processes), or rebuild with a smaller --batch MAX")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(self._device)
        self._buffers = GrowingBuffers(lambda n: torch.empty(n, dtype=torch.uint8, device=self._device))
        self._allocator = make_output_allocator(trt, self._buffers)

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
        torch, ctx = self._torch, self._context
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(images).to(self._device, self._dtypes[INPUT_NAME])
            if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise fail(f"TensorRT refused input shape {tuple(x.shape)}: {self._last_error()}",
                           "pass a batch inside the engine's profile")
            ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
            fixed = {}
            for name in self._outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):  # known only once the engine has run: TensorRT asks the allocator
                    ctx.set_output_allocator(name, self._allocator)
                else:
                    fixed[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
                    ctx.set_tensor_address(name, fixed[name].data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.artifact}: {self._last_error()}")
            out = {n: fixed[n] if n in fixed else self._buffers.tensor(n, self._dtypes[n]) for n in self._outputs}
            return {n: t.cpu().numpy() for n, t in out.items()}  # .cpu() waits for the stream

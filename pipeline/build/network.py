"""What both builders share, TensorRT and TensorRT-RTX having one Python API: the logger, parsing the ONNX into a
strongly typed network, the batch profile, and the build itself."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from pipeline.build.profile import BatchProfile
from pipeline.build.progress import build_progress
from pipeline.errors import fail

INPUT_NAME = "images"
# Logged by TensorRT-RTX while it builds on a machine without a GPU, and harmless there: kept out of error reports.
_NO_GPU_NOISE = ("CUDA driver version is insufficient", "cudaError 35", "no CUDA-capable device")


def make_logger(trt: Any, verbose: bool = False, stream: Optional[TextIO] = None) -> Any:
    """A trt.ILogger that keeps errors for our messages, counts warnings, and echoes everything with --verbose."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings = 0

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                self.errors.append(msg)
            elif level == 2:
                self.warnings += 1
            if verbose and level <= 3:
                (stream or sys.stderr).write(f"[{severity.name.lower()}] {msg}\n")

        def relevant_errors(self, have_gpu: bool) -> list[str]:
            return [m for m in self.errors if have_gpu or not any(n in m for n in _NO_GPU_NOISE)]

    return Logger()


def _parser_error(error: Any) -> str:
    where = []
    for label, attr in (("node", "node_name"), ("op", "node_operator")):
        value = getattr(error, attr, None)
        value = value() if callable(value) else value
        if value:
            where.append(f"{label} {value}")
    return f"{error.desc()}" + (f" ({', '.join(where)})" if where else "")


def strongly_typed_network(trt: Any, builder: Any) -> Any:
    """A network whose tensor types come from the ONNX (TensorRT 11 and TensorRT-RTX have no other kind)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return builder.create_network(0 if flag is None else 1 << int(flag))


def parse_onnx(trt: Any, builder: Any, logger: Any, path: Path, source: Path, label: str) -> tuple[Any, Any]:
    """Parse `path` (the prepared copy of `source`) into a network; returns (network, parser): keep both alive."""
    network = strongly_typed_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        detail = "; ".join(dict.fromkeys(errors)) or "; ".join(logger.errors[-3:]) or "no reason given"
        raise fail(f"{label} cannot parse {source}: {detail}",
                   "export it again with `tokengate export`, or run with --verbose for TensorRT's full log")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [INPUT_NAME] or len(network.get_input(0).shape) != 4:
        raise fail(f"{source} has inputs {names}, not one input {INPUT_NAME} [B, C, H, W]",
                   "build an ONNX written by `tokengate export`")
    return network, parser


def build_serialized(trt: Any, builder: Any, network: Any, config: Any, logger: Any, profile: BatchProfile,
                     chw: tuple[int, ...], label: str, what: str, have_gpu: bool) -> bytes:
    """Add the batch profile and build; the serialized engine, or a clear error with TensorRT's own reason."""
    shapes = builder.create_optimization_profile()
    shapes.set_shape(INPUT_NAME, *profile.shapes(chw))
    config.add_optimization_profile(shapes)
    with build_progress(trt, f"{label} build") as monitor:
        if monitor is not None:
            config.progress_monitor = monitor
        blob: Optional[Any] = builder.build_serialized_network(network, config)
    if blob is None:
        errors = logger.relevant_errors(have_gpu)
        reason = errors[-1] if errors else "no reason given"
        raise fail(f"{label} could not build {what}: {reason}", "run with --verbose for TensorRT's full log")
    return memoryview(blob).tobytes()

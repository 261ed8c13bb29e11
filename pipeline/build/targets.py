"""GPU targets (`sm86`, ...): parsing, what each one is, and which GPU this machine has.

TensorRT builds for the GPU it runs on; TensorRT-RTX builds on the CPU for the RTX-family targets it knows. So a
target is a compute capability, named the way nvcc names it (`sm86` = compute capability 8.6).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Optional

from pipeline.errors import fail

# Compute capabilities TensorRT 10/11 can build for, with the GPUs people know them by.
KNOWN_TARGETS: dict[str, str] = {
    "sm75": "Turing: T4, RTX 20",
    "sm80": "Ampere: A100, A30",
    "sm86": "Ampere: RTX 30, A10, A40, RTX A-series",
    "sm87": "Jetson AGX Orin",
    "sm89": "Ada: RTX 40, L4, L40",
    "sm90": "Hopper: H100, H200, GH200",
    "sm100": "Blackwell: B200, GB200",
    "sm103": "Blackwell Ultra: B300, GB300",
    "sm110": "Jetson Thor",
    "sm120": "Blackwell: RTX 50, RTX PRO 6000",
    "sm121": "Blackwell: DGX Spark, GB10",
}
# What TensorRT-RTX 1.7 builds for (its ComputeCapability enum); `rtx_builder` reads the installed module's own list.
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
CPU_DEFAULT_TARGET = "sm86"  # `make engine` without a GPU: the most common RTX target, built through TensorRT-RTX

_FORMS = re.compile(r"^(?:sm_?|compute_?)?(\d{2,3})$|^(\d{1,2})\.(\d)$")


def parse_target(text: str) -> str:
    """Canonical name (`sm86`) of `sm86`, `sm_86`, `86` or `8.6` (`12.0` is sm120); a clear error otherwise."""
    match = _FORMS.match(text.strip().lower())
    name = None
    if match:
        name = f"sm{match.group(1)}" if match.group(1) else f"sm{match.group(2)}{match.group(3)}"
    if name not in KNOWN_TARGETS:
        known = ", ".join(f"{t} ({KNOWN_TARGETS[t].split(':')[-1].strip()})" for t in KNOWN_TARGETS)
        raise fail(f"unknown GPU target {text!r}", f"use a compute capability TensorRT builds for: {known}")
    return name


def describe(target: str) -> str:
    """`sm86 (Ampere: RTX 30, A10, ...)`, for messages."""
    return f"{target} ({KNOWN_TARGETS[target]})" if target in KNOWN_TARGETS else target


def from_compute_cap(text: str) -> Optional[str]:
    """`8.6` (nvidia-smi's compute_cap) -> `sm86`; None when it is not a compute capability."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return f"sm{match.group(1)}{match.group(2)}" if match else None


def _from_torch() -> Optional[str]:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm{major}{minor}"


def _from_nvidia_smi() -> Optional[str]:
    """The first GPU's compute capability from nvidia-smi (drivers from 510 on know `compute_cap`)."""
    values = query_gpu("compute_cap")
    return from_compute_cap(values[0]) if values else None


def query_gpu(fields: str) -> Optional[list[str]]:
    """The first GPU's values of nvidia-smi's --query-gpu `fields` (comma-separated), or None where nvidia-smi is
    missing, fails or lists no GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return [cell.strip() for cell in lines[0].split(",")] if lines else None


def detect_target() -> Optional[str]:
    """This machine's GPU as a target name (torch first: it honours CUDA_VISIBLE_DEVICES), or None without one."""
    return _from_torch() or _from_nvidia_smi()

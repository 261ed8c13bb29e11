"""ctypes bridge to the TokenSelect CUDA kernels in `plugins/build/libtokengate_kernels.so` (`make plugins`).

The same kernels run inside the TensorRT plugin; this lets tests and benchmarks check them against
`token_ops.token_select_reference` on torch CUDA tensors, without TensorRT. The C ABI is
`plugins/tokenSelect/tokenSelectKernel.h`.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from pipeline.errors import fail

LIBRARY_NAME = "libtokengate_kernels.so"
DEFAULT_LIBRARY = Path(__file__).resolve().parent.parent / "plugins" / "build" / LIBRARY_NAME
ABI_VERSION = 1  # TOKENGATE_KERNELS_ABI_VERSION
_DTYPES = {torch.float32: 0, torch.float16: 1}  # TOKENGATE_DTYPE_*


def library_path(path: str | Path | None = None) -> Path:
    """The kernel library to load: `path` if given, else the one `make plugins` builds."""
    return Path(path) if path is not None else DEFAULT_LIBRARY


@lru_cache(maxsize=None)
def _load(path: Path) -> ctypes.CDLL:
    if not path.is_file():
        raise fail(f"CUDA kernel library {path} not found", "build it with `make plugins` (needs nvcc and CMake)")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise fail(f"cannot load {path}: {e}", "rebuild it with `make plugins`") from e
    lib.tokengate_kernels_abi_version.restype = ctypes.c_int32
    lib.tokengate_kernels_abi_version.argtypes = []
    lib.tokengate_token_select_workspace_size.restype = ctypes.c_size_t
    lib.tokengate_token_select_workspace_size.argtypes = [ctypes.c_int64] * 3
    lib.tokengate_token_select.restype = ctypes.c_int32
    lib.tokengate_token_select.argtypes = (
        [ctypes.c_int32] + [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 5 + [ctypes.c_void_p]
    )
    lib.tokengate_status_string.restype = ctypes.c_char_p
    lib.tokengate_status_string.argtypes = [ctypes.c_int32]
    found = lib.tokengate_kernels_abi_version()
    if found != ABI_VERSION:
        raise fail(f"{path} has kernel ABI version {found}, this code needs {ABI_VERSION}",
                   "rebuild it with `make plugins`")
    return lib


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """Load (once) and type the kernel library; TokenGateError with the fix if it is missing or stale."""
    return _load(library_path(path).resolve())


def workspace_size(batch: int, num_tokens: int, num_prefix: int, library: str | Path | None = None) -> int:
    """Device bytes the kernels need for the kept-index buffer."""
    return int(load_library(library).tokengate_token_select_workspace_size(batch, num_tokens, num_prefix))


def token_select_cuda(
    x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor | float, num_prefix: int, min_keep: int,
    library: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokengate::TokenSelect` v1 on the GPU through the plugin's kernels; same contract as the reference.

    Args:
        x: [B, N, C] float32 or float16 CUDA tensor.  scores: [B, N - num_prefix], same dtype and device.
        threshold: scalar (tensor or float), cast to x's dtype.
    Returns:
        y [B, K, C] and lengths [B] int32, K = max(lengths). Reading K synchronizes the current stream, as the
        reference's `.max()` does.
    """
    lib = load_library(library)
    if not torch.cuda.is_available():
        raise fail("token_select_cuda needs an NVIDIA GPU, and torch sees none", "run it on a machine with CUDA")
    if not x.is_cuda:
        raise fail(f"x is on {x.device}, not a CUDA device", "move the inputs to the GPU (x.cuda())")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be float32 or float16, got {x.dtype}")
    if x.dim() != 3 or scores.shape != (x.shape[0], x.shape[1] - num_prefix):
        raise ValueError(f"expected x [B, N, C] and scores [B, N - {num_prefix}], got {tuple(x.shape)} and "
                         f"{tuple(scores.shape)}")
    if scores.dtype != x.dtype or scores.device != x.device:
        raise ValueError("scores must have x's dtype and device")
    if num_prefix < 1 or min_keep < 1:
        raise ValueError(f"need num_prefix >= 1 and min_keep >= 1, got {num_prefix} and {min_keep}")
    if isinstance(threshold, torch.Tensor) and threshold.numel() != 1:
        raise ValueError(f"threshold must be a scalar, got shape {tuple(threshold.shape)}")
    thr = torch.as_tensor(threshold, dtype=x.dtype, device=x.device).reshape(())
    launch = prepare_launch(lib, x.contiguous(), scores.contiguous(), thr.contiguous(), num_prefix, min_keep)
    status = launch.run()
    if status != 0:
        raise RuntimeError(f"tokengate_token_select failed ({status}): {lib.tokengate_status_string(status).decode()}")
    batch, _, channels = x.shape
    k = int(launch.k.item())
    return launch.y[: batch * k * channels].view(batch, k, channels), launch.lengths


class Launch(NamedTuple):
    """Output buffers allocated once, and the two kernel launches on them as a call (returns the status)."""

    run: Callable[[], int]
    y: torch.Tensor  # [B * N * C]: room for the upper bound K = N
    lengths: torch.Tensor  # [B] int32
    k: torch.Tensor  # [1] int32, K = max(lengths), left on the device


def prepare_launch(lib: ctypes.CDLL, x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor, num_prefix: int,
                   min_keep: int) -> Launch:
    """What the plugin's enqueue does per call, without TensorRT: `run()` launches on the current stream with no
    allocation and no host sync, so timing it times the kernels alone. Inputs must be contiguous CUDA tensors of
    one dtype (float32 or float16), `threshold` a 0-d tensor."""
    batch, num_tokens, channels = x.shape
    y = torch.empty(batch * num_tokens * channels, dtype=x.dtype, device=x.device)
    lengths = torch.empty(batch, dtype=torch.int32, device=x.device)
    k = torch.empty(1, dtype=torch.int32, device=x.device)
    workspace = torch.empty(max(1, lib.tokengate_token_select_workspace_size(batch, num_tokens, num_prefix)),
                            dtype=torch.uint8, device=x.device)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
    buffers = (x, scores, threshold, y, lengths, k, workspace)  # the call keeps them alive: it holds raw pointers

    def run() -> int:
        inputs, outputs = buffers[:3], buffers[3:]
        return int(lib.tokengate_token_select(_DTYPES[x.dtype], *(t.data_ptr() for t in inputs),
                                              *(t.data_ptr() for t in outputs), batch, num_tokens, channels,
                                              num_prefix, min_keep, stream))

    return Launch(run, y, lengths, k)

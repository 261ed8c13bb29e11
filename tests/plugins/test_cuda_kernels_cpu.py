"""pipeline/cuda_kernels.py where no GPU is needed: loading the library and the errors a user can run into."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import cuda_kernels
from pipeline.errors import TokenGateError


def test_missing_library_says_how_to_build_it(tmp_path: Path):
    with pytest.raises(TokenGateError, match="make plugins"):
        cuda_kernels.load_library(tmp_path / "libtokengate_kernels.so")


def test_default_library_is_the_make_plugins_output():
    assert cuda_kernels.library_path() == Path(__file__).resolve().parents[2] / "plugins" / "build" / \
        "libtokengate_kernels.so"


@pytest.mark.slow
def test_loads_the_built_library_and_sizes_the_workspace(kernel_build):
    library = kernel_build[0] / "libtokengate_kernels.so"
    lib = cuda_kernels.load_library(library)
    assert lib.tokengate_kernels_abi_version() == cuda_kernels.ABI_VERSION
    assert cuda_kernels.workspace_size(64, 197, 1, library) == 64 * 196 * 4
    assert cuda_kernels.workspace_size(2, 5, 1, library) == 256  # rounded up to 256-byte alignment


@pytest.mark.slow
def test_cpu_tensors_are_refused_with_the_fix(kernel_build):
    library = kernel_build[0] / "libtokengate_kernels.so"
    x, scores = torch.randn(2, 5, 4), torch.randn(2, 4)
    fix = "GPU" if not torch.cuda.is_available() else "CUDA device"
    with pytest.raises(TokenGateError, match=fix):
        cuda_kernels.token_select_cuda(x, scores, 0.0, 1, 1, library=library)

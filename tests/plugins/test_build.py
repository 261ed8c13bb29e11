"""plugins/CMakeLists.txt with nvcc on the CPU: the kernel library for every default GPU arch, the plugin skipped
without TensorRT, and (given TENSORRT_INCLUDE_DIR) the plugin compiled against the headers and self-tested."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEFAULT_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
KERNEL_ABI = {"tokengate_kernels_abi_version", "tokengate_token_select_workspace_size", "tokengate_token_select",
              "tokengate_status_string"}


def _cuobjdump() -> str:
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton (a torch dependency) ships."""
    candidates = [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                                          "cuobjdump")]
    triton = importlib.util.find_spec("triton")
    if triton is not None and triton.origin:
        candidates.append(str(Path(triton.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("cuobjdump not found: install the CUDA toolkit's cuobjdump (or the nvidia-cuda-cuobjdump wheel)")


def _exported(library: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.split()[1:2] == ["T"]}


def test_kernel_library_has_cubins_for_every_default_arch(kernel_build):
    build_dir, _ = kernel_build
    library = build_dir / "libtokengate_kernels.so"
    assert library.is_file()
    listing = subprocess.run([_cuobjdump(), "--list-elf", str(library)], capture_output=True, text=True, check=True)
    for arch in DEFAULT_ARCHS:
        assert f".{arch}.cubin" in listing.stdout, listing.stdout


def test_plugin_is_skipped_without_tensorrt_and_says_why(kernel_build):
    build_dir, output = kernel_build
    assert "TokenSelect TensorRT plugin: skipped, TensorRT headers not found" in output
    assert "-DTensorRT_ROOT" in output
    assert not (build_dir / "libtokengate_plugins.so").exists()


def test_kernel_library_exports_only_the_c_abi(kernel_build):
    build_dir, _ = kernel_build
    assert _exported(build_dir / "libtokengate_kernels.so") == KERNEL_ABI


def test_c_abi_validates_arguments_without_a_gpu(kernel_build):
    lib = ctypes.CDLL(str(kernel_build[0] / "libtokengate_kernels.so"))
    lib.tokengate_token_select_workspace_size.restype = ctypes.c_size_t
    lib.tokengate_token_select_workspace_size.argtypes = [ctypes.c_int64] * 3
    lib.tokengate_token_select.argtypes = [ctypes.c_int32] + [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 5 + [
        ctypes.c_void_p]
    lib.tokengate_status_string.restype = ctypes.c_char_p
    assert lib.tokengate_kernels_abi_version() == 1
    assert lib.tokengate_token_select_workspace_size(64, 197, 1) == 64 * 196 * 4  # already 256-byte aligned
    assert lib.tokengate_token_select_workspace_size(3, 10, 1) == 256
    assert lib.tokengate_token_select_workspace_size(3, 1, 1) == 0  # no patch tokens, no index buffer
    buf = ctypes.create_string_buffer(64)
    p = ctypes.cast(buf, ctypes.c_void_p)

    def call(dtype=0, x=p, batch=2, tokens=9, channels=4, prefix=1, min_keep=1):
        return lib.tokengate_token_select(dtype, x, p, p, p, p, p, p, batch, tokens, channels, prefix, min_keep, None)

    assert call(dtype=2) == -1
    assert call(tokens=0, prefix=1) == -2
    assert call(prefix=0) == -3 and call(min_keep=0) == -3
    assert call(x=None) == -4
    assert call(channels=1 << 40) == -5
    assert b"min_keep" in lib.tokengate_status_string(-3)


def _tensorrt_include_dir() -> str | None:
    return os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TensorRT_INCLUDE_DIR")


@pytest.mark.tensorrt
@pytest.mark.skipif(_tensorrt_include_dir() is None,
                    reason="set TENSORRT_INCLUDE_DIR to TensorRT's include/ to compile-check the plugin")
def test_plugin_compiles_against_tensorrt_headers_and_passes_its_selftest(tmp_path: Path, build_plugins):
    include_dir = _tensorrt_include_dir()
    # One arch keeps it quick: arch coverage is checked above; this is about the plugin sources and entry points.
    output = build_plugins(tmp_path, f"-DTensorRT_INCLUDE_DIR={include_dir}", "-DCMAKE_CUDA_ARCHITECTURES=80")
    assert "TokenSelect TensorRT plugin: TensorRT" in output
    plugin = tmp_path / "libtokengate_plugins.so"
    assert {"getCreators", "setLoggerFinder"} <= _exported(plugin)
    selftest = subprocess.run([str(tmp_path / "tokengate_plugin_selftest"), str(plugin)], capture_output=True,
                              text=True, timeout=120)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert " 0 failed" in selftest.stdout

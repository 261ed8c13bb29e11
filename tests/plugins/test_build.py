"""plugins/CMakeLists.txt with nvcc on the CPU: the kernel library for every default GPU arch, the plugin skipped
without TensorRT, the CUDA runtime choice, and (given TENSORRT_INCLUDE_DIR) the plugin compiled against the headers,
exporting its two entry points alone, and self-tested."""
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


def _defined_dynamic_symbols(library: Path) -> set[str]:
    """Every symbol `nm -D --defined-only` lists, of any type (functions, data, weak), without version suffixes."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}


def _needed(library: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True)
    return [line.split("[")[1].rstrip("]") for line in out.stdout.splitlines() if "(NEEDED)" in line]


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


def test_static_cuda_runtime_by_default_and_the_driver_it_needs(kernel_build):
    build_dir, output = kernel_build
    assert not any(lib.startswith("libcudart") for lib in _needed(build_dir / "libtokengate_kernels.so"))
    assert "TokenGate CUDA runtime: Static cudart" in output and "NVIDIA driver R" in output


def test_shared_cuda_runtime_on_request(tmp_path: Path, build_plugins):
    output = build_plugins(tmp_path, "-DTOKENGATE_CUDA_RUNTIME=Shared", "-DCMAKE_CUDA_ARCHITECTURES=80")
    assert "TokenGate CUDA runtime: Shared cudart" in output
    assert any(lib.startswith("libcudart.so.") for lib in _needed(tmp_path / "libtokengate_kernels.so"))


def test_an_unknown_cuda_runtime_is_refused(tmp_path: Path):
    plugins_dir = Path(__file__).resolve().parents[2] / "plugins"
    result = subprocess.run(["cmake", "-S", str(plugins_dir), "-B", str(tmp_path), "-DTOKENGATE_CUDA_RUNTIME=None"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "TOKENGATE_CUDA_RUNTIME must be Static or Shared" in result.stderr


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


needs_tensorrt_headers = pytest.mark.skipif(
    _tensorrt_include_dir() is None,
    reason="libtokengate_plugins.so cannot be built here: no TensorRT headers (set TENSORRT_INCLUDE_DIR to "
           "TensorRT's include/)")


@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory, build_plugins) -> Path:
    """plugins/ built against the TensorRT headers; one arch keeps it quick (arch coverage is checked above)."""
    build_dir = tmp_path_factory.mktemp("plugin-build")
    output = build_plugins(build_dir, f"-DTensorRT_INCLUDE_DIR={_tensorrt_include_dir()}",
                           "-DCMAKE_CUDA_ARCHITECTURES=80")
    assert "TokenSelect TensorRT plugin: TensorRT" in output
    return build_dir


@pytest.mark.tensorrt
@needs_tensorrt_headers
def test_plugin_library_exports_only_its_two_entry_points(plugin_build: Path):
    """TensorRT looks up getCreators and setLoggerFinder; the kernel C ABI linked in must not leak out."""
    assert _defined_dynamic_symbols(plugin_build / "libtokengate_plugins.so") == {"getCreators", "setLoggerFinder"}


@pytest.mark.tensorrt
@needs_tensorrt_headers
def test_plugin_compiles_against_tensorrt_headers_and_passes_its_selftest(plugin_build: Path):
    plugin = plugin_build / "libtokengate_plugins.so"
    selftest = subprocess.run([str(plugin_build / "tokengate_plugin_selftest"), str(plugin)], capture_output=True,
                              text=True, timeout=300)
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert " 0 failed" in selftest.stdout

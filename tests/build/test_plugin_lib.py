"""The plugin library checks: missing, foreign or stale libraries (compiled here with the C compiler), the versions
this code and the C++ sources agree on, and TensorRT's registry (faked at its Python API)."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.build import plugin_lib
from pipeline.errors import TokenGateError

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def _shared_library(tmp_path: Path, name: str, source: str) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc/gcc) to build stand-in libraries")
    src, lib = tmp_path / f"{name}.c", tmp_path / f"{name}.so"
    src.write_text(source)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib


def _plugin_like(tmp_path: Path, abi: int) -> Path:
    return _shared_library(tmp_path, f"libplugin_abi{abi}", f"""
        void* getCreators(int* n) {{ *n = 0; return 0; }}
        int tokengate_kernels_abi_version(void) {{ return {abi}; }}""")


def test_versions_match_the_cpp_sources():
    kernel_h = (PLUGINS / "tokenSelect" / "tokenSelectKernel.h").read_text()
    plugin_h = (PLUGINS / "tokenSelect" / "tokenSelectPlugin.h").read_text()
    assert int(re.search(r"#define TOKENGATE_KERNELS_ABI_VERSION (\d+)", kernel_h).group(1)) == plugin_lib.ABI_VERSION
    constants = dict(re.findall(r'constexpr char const\* kTOKEN_SELECT_(\w+) = "([^"]*)"', plugin_h))
    assert constants == {"NAME": plugin_lib.PLUGIN_NAME, "VERSION": plugin_lib.PLUGIN_VERSION,
                         "NAMESPACE": plugin_lib.PLUGIN_NAMESPACE}


def test_missing_library_says_how_to_build_it(tmp_path):
    with pytest.raises(TokenGateError, match="plugin library .*nope.so not found.*make plugins TensorRT_ROOT"):
        plugin_lib.check_library(tmp_path / "nope.so")


def test_not_a_shared_library(tmp_path):
    bogus = tmp_path / "libtokengate_plugins.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(TokenGateError, match="cannot load plugin library"):
        plugin_lib.check_library(bogus)


def test_a_library_without_plugin_entry_points_is_refused(tmp_path):
    lib = _shared_library(tmp_path, "libtokengate_kernels", "int tokengate_kernels_abi_version(void) { return 1; }")
    with pytest.raises(TokenGateError, match="not a TensorRT plugin library.*kernel-only library"):
        plugin_lib.check_library(lib)


def test_a_foreign_plugin_library_is_refused(tmp_path):
    lib = _shared_library(tmp_path, "libother", "void* getCreators(int* n) { *n = 0; return 0; }")
    with pytest.raises(TokenGateError, match="not TokenGate's plugin library"):
        plugin_lib.check_library(lib)


def test_a_stale_abi_version_is_refused(tmp_path):
    with pytest.raises(TokenGateError, match="kernel ABI version 2, this code needs 1.*rebuild"):
        plugin_lib.check_library(_plugin_like(tmp_path, 2))


def test_a_good_library_is_described_with_its_hash(tmp_path):
    lib = _plugin_like(tmp_path, plugin_lib.ABI_VERSION)
    found = plugin_lib.check_library(lib)
    assert found.path == lib.resolve() and found.abi_version == plugin_lib.ABI_VERSION
    assert found.sha256 == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert found.to_dict()["plugin"] == "tokengate::TokenSelect v1"


class FakeRegistry:
    """TensorRT's IPluginRegistry as far as `register` uses it: get_creator, all_creators, load_library."""

    def __init__(self, provides: list[tuple[str, str, str]]):
        self.provides, self.creators, self.loads = provides, [], []

    def load_library(self, path: str):
        self.loads.append(path)
        self.creators = [SimpleNamespace(name=n, plugin_version=v, plugin_namespace=ns) for n, v, ns in self.provides]
        return object()

    def get_creator(self, name: str, version: str, namespace: str):
        return next((c for c in self.creators if (c.name, c.plugin_version, c.plugin_namespace) ==
                     (name, version, namespace)), None)

    @property
    def all_creators(self):
        return self.creators


def _register(registry: FakeRegistry, tmp_path: Path) -> None:
    library = plugin_lib.PluginLibrary(tmp_path / "lib.so", "0" * 64, 1)
    plugin_lib.register(SimpleNamespace(get_plugin_registry=lambda: registry), library)


def test_register_loads_once_and_finds_token_select(tmp_path):
    registry = FakeRegistry([("TokenSelect", "1", "tokengate")])
    _register(registry, tmp_path)
    _register(registry, tmp_path)  # already there: not loaded again (TensorRT refuses duplicate creators)
    assert registry.loads == [str(tmp_path / "lib.so")]


def test_register_names_the_versions_a_wrong_library_brings(tmp_path):
    registry = FakeRegistry([("TokenSelect", "2", "tokengate"), ("Other", "1", "")])
    with pytest.raises(TokenGateError, match="registers TokenSelect version 2 in namespace 'tokengate'; this code "
                                             "writes TokenSelect version 1"):
        _register(registry, tmp_path)


def test_register_says_when_nothing_arrived(tmp_path):
    with pytest.raises(TokenGateError, match="loaded no tokengate::TokenSelect v1 creator"):
        _register(FakeRegistry([]), tmp_path)

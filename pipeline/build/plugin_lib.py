"""Our TensorRT plugin library (`libtokengate_plugins.so`): find it, check it is the right one, register it.

Checked twice. Before TensorRT sees it, through ctypes: the plugin entry point `getCreators` and the kernel ABI
version (`tokengate_kernels_abi_version`), so a missing, foreign or stale library fails in one clear line rather
than deep inside the ONNX parser. After `IPluginRegistry.load_library`: that the registry now holds
`tokengate::TokenSelect` at the version this code writes into the ONNX.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.artifacts import sha256_file
from pipeline.contract import DOMAIN, OP_TYPE, VERSION
from pipeline.errors import fail

LIBRARY_NAME = "libtokengate_plugins.so"
DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / "plugins" / "build" / LIBRARY_NAME
ABI_VERSION = 1  # TOKENGATE_KERNELS_ABI_VERSION in plugins/tokenSelect/tokenSelectKernel.h
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = OP_TYPE, str(VERSION), DOMAIN  # the plugin's registry keys
BUILD_HINT = "build it with `make plugins TensorRT_ROOT=/path/to/TensorRT` (needs nvcc, CMake and TensorRT's headers)"

_registered: dict[str, Any] = {}  # resolved path -> the registry's library handle, kept alive for the process


@dataclass(frozen=True)
class PluginLibrary:
    path: Path
    sha256: str
    abi_version: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "abi_version": self.abi_version,
                "plugin": f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION}"}


def check_library(path: Optional[str | Path] = None) -> PluginLibrary:
    """Open the library with ctypes (it links no libnvinfer, so this works without TensorRT) and check its ABI."""
    path = Path(path if path is not None else DEFAULT_LIBRARY).expanduser().resolve()
    if not path.is_file():
        raise fail(f"plugin library {path} not found (the plugin flavor's TokenSelect layers live in it)",
                   f"{BUILD_HINT}, or pass --plugin-lib PATH")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise fail(f"cannot load plugin library {path}: {exc}", f"rebuild it: {BUILD_HINT}") from None
    if not hasattr(lib, "getCreators"):
        hint = " (that is the kernel-only library)" if path.name == "libtokengate_kernels.so" else ""
        raise fail(f"{path} is not a TensorRT plugin library: it has no getCreators entry point{hint}",
                   f"pass {LIBRARY_NAME}; {BUILD_HINT}")
    if not hasattr(lib, "tokengate_kernels_abi_version"):
        raise fail(f"{path} has no tokengate_kernels_abi_version, so it is not TokenGate's plugin library",
                   f"pass plugins/build/{LIBRARY_NAME}; {BUILD_HINT}")
    lib.tokengate_kernels_abi_version.restype = ctypes.c_int32
    found = int(lib.tokengate_kernels_abi_version())
    if found != ABI_VERSION:
        raise fail(f"{path} has kernel ABI version {found}, this code needs {ABI_VERSION}", f"rebuild it: {BUILD_HINT}")
    return PluginLibrary(path, sha256_file(path), found)


def find_creator(registry: Any) -> Any:
    """The registry's TokenSelect creator at our version and namespace, or None."""
    try:
        return registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    except Exception:  # noqa: BLE001 - TensorRT raises for unknown creators in some versions, returns None in others
        return None


def _versions_found(registry: Any) -> list[str]:
    found = []
    for creator in getattr(registry, "all_creators", None) or []:
        if getattr(creator, "name", None) == PLUGIN_NAME:
            found.append(f"version {getattr(creator, 'plugin_version', '?')} in namespace "
                         f"{getattr(creator, 'plugin_namespace', '') or '(none)'!r}")
    return found


def register(trt: Any, library: PluginLibrary) -> None:
    """Load the library into TensorRT's plugin registry (once per process) and check TokenSelect v1 arrived."""
    registry = trt.get_plugin_registry()
    key = str(library.path)
    if find_creator(registry) is None and key not in _registered:
        handle = registry.load_library(key)  # None when it fails, e.g. a creator of the same name already exists
        if handle is not None:
            _registered[key] = handle
    if find_creator(registry) is not None:
        return
    found = _versions_found(registry)
    if found:
        raise fail(f"{library.path} registers {PLUGIN_NAME} {', '.join(found)}; this code writes "
                   f"{PLUGIN_NAME} version {PLUGIN_VERSION} in namespace {PLUGIN_NAMESPACE!r}",
                   f"rebuild the library from this checkout: {BUILD_HINT}")
    raise fail(f"TensorRT loaded no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION} creator from {library.path}",
               f"check TensorRT's log above, and rebuild the library against this TensorRT: {BUILD_HINT}")

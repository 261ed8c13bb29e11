"""Which exporter wrote a file: a digest of the code that shapes the graph and of the tracer's versions.

Every export records it (`ExportInfo.exporter`). Two exporters with the same graph passes can still write different
graphs (a changed model forward, a changed pass, another torch), so the bench compares this digest, not the pass
list, before it times a file a run already holds, and re-exports a file another exporter wrote.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

import pipeline

# The code of `pipeline` that decides what an export's graph is (packages, and modules beside them: which flavors
# score tokens TensorRT's way, the custom op's domain and name), and the distributions that trace it.
GRAPH_PACKAGES = ("export", "models", "ops")
GRAPH_MODULES = ("flavors.py", "contract.py")
TRACERS = ("torch", "onnx", "onnxscript")


@functools.lru_cache(maxsize=None)
def exporter_id() -> str:
    """This installation's exporter: `graph_code_digest` of the installed `pipeline` package."""
    return graph_code_digest(Path(pipeline.__file__).parent)


def graph_code_digest(root: Path) -> str:
    """16 hex digits of sha256 over the sources of GRAPH_PACKAGES and GRAPH_MODULES under `root` (path and bytes, in
    path order) and the TRACERS' installed versions."""
    digest = hashlib.sha256()
    sources = [source for package in GRAPH_PACKAGES for source in sorted((root / package).rglob("*.py"))]
    for source in sources + [root / module for module in GRAPH_MODULES]:
        digest.update(source.relative_to(root).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    for dist in TRACERS:
        digest.update(f"{dist}=={_version(dist)}\0".encode())
    return digest.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"

"""Atomic artifact writes: a failed run never leaves a half-written file where a good one was."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and a writer may replace the file it was given (safetensors does): the
        # permissions are set on whatever the block left, just before the rename
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_onnx(proto: Any, path: str | Path, external_data: bool = False, check: bool = True) -> Path:
    """Save an ONNX model atomically, checked (onnx.checker) before it takes the name. With `external_data`, the
    weights go to PATH.data, which the model names: both files are written under their final names in a scratch
    directory beside `path` and moved into place, the data first, so a failed save leaves the old pair intact."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
            if check:
                onnx.checker.check_model(str(tmp), full_check=False)
        return path
    data = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        staged, staged_data = Path(scratch) / path.name, Path(scratch) / data.name
        onnx.save_model(proto, str(staged), save_as_external_data=True, location=data.name, size_threshold=0)
        if check:
            onnx.checker.check_model(str(staged), full_check=False)
        for source, target in ((staged_data, data), (staged, path)):  # the data first: the model names it
            os.chmod(source, 0o666 & ~_umask())  # onnx writes the data file 0600
            os.replace(source, target)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (engines and ONNX files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def update_summary(run_dir: str | Path, key: str, value: Any) -> dict[str, Any]:
    """Set one top-level key of runs/NAME/summary.json, keeping the keys other stages wrote."""
    path = Path(run_dir) / "summary.json"
    summary = read_json(path) if path.is_file() else {}
    summary[key] = value
    write_json(path, summary)
    return summary


def save_png(fig: Any, path: str | Path, dpi: Optional[int] = None) -> Path:
    """Write a matplotlib figure as PNG atomically and close it (a failed plot never leaves half a file)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    return path

"""Reading and writing model weights: safetensors plus a JSON header that says what the tensors are."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from pipeline.artifacts import atomic_path
from pipeline.errors import fail


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from .safetensors or a torch pickle (weights only), with a clear error if it is broken."""
    path = Path(path)
    if not path.is_file():
        raise fail(f"checkpoint {path} does not exist", "check the path (model.checkpoint or the run directory)")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise fail(f"checkpoint {path} is corrupt or not a weights file ({type(exc).__name__})",
                   "re-create it (e.g. re-run `tokengate train`) or pass another file") from None
    if not isinstance(state, dict):
        raise fail(f"checkpoint {path} holds a {type(state).__name__}, not a state_dict", "save model.state_dict()")
    return state


def save_weights(path: str | Path, state: dict[str, torch.Tensor], header: dict[str, Any] | None = None) -> None:
    """Write a safetensors file atomically; `header` is stored as JSON in its metadata under 'tokengate'."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"tokengate": json.dumps(header)} if header is not None else None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_header(path: str | Path) -> dict[str, Any] | None:
    """The JSON header `save_weights` stored, or None for a plain safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise fail(f"checkpoint {path} is corrupt or not a safetensors file ({type(exc).__name__})",
                   "re-create it with `tokengate train`") from None
    raw = meta.get("tokengate")
    return None if raw is None else json.loads(raw)

"""Per-phase training checkpoints (model + optimizer + epoch) in safetensors, so training resumes after a stop."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.checkpoints import read_header, read_state_dict, save_weights


def checkpoint_path(run_dir: Path, phase: str) -> Path:
    return run_dir / "ckpt" / f"{phase}.safetensors"


def save_phase(run_dir: Path, phase: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               epoch: int, extra: Optional[dict[str, Any]] = None) -> None:
    """Everything needed to continue `phase` after `epoch` completed epochs."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"opt.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    header = {"phase": phase, "epoch": epoch, "param_groups": opt["param_groups"], **(extra or {})}
    save_weights(checkpoint_path(run_dir, phase), tensors, header)


def load_phase(run_dir: Path, phase: str) -> Optional[tuple[dict[str, Any], dict[str, torch.Tensor], dict]]:
    """(header, model state, optimizer state) of a phase checkpoint, or None if there is none."""
    path = checkpoint_path(run_dir, phase)
    if not path.is_file():
        return None
    header = read_header(path) or {}
    tensors = read_state_dict(path)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    return header, model_state, {"state": opt_state, "param_groups": header["param_groups"]}

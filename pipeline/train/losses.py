"""Training objectives: cross-entropy, KL distillation from the dense teacher, and the FLOPs budget term."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    log_target=True, reduction="batchmean") * t * t


def budget(macs: torch.Tensor, dense_macs: float, target: float) -> torch.Tensor:
    """|mean MACs of the batch / dense MACs - target|: the batch mean lets easy images pay for hard ones."""
    return (macs.mean() / dense_macs - target).abs()


def static_ceiling(macs: torch.Tensor, dense_macs: float, ceiling: float) -> torch.Tensor:
    """max(0, static MACs / dense - ceiling): the sliced structure itself must shrink, whatever tokens do."""
    return torch.relu(macs / dense_macs - ceiling)

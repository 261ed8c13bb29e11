"""Training-free thresholds that make a token-gated model keep given shares of its patch tokens, per stage.

Uses the calibration package's stage-by-stage forward (`calib.staged.StagedForward`: every image's scores at a
stage are known before that stage's threshold is chosen) and its pooled-quantile rule
(`calib.search.quantile_threshold`). Stage s keeps the share ratios[s] / ratios[s-1] of the patch tokens still
valid before it, pooled over all images, so the mean cumulative keep ratio after stage s is ratios[s] (up to
min_keep top-ups), in one forward pass, without bisection. Images whose attention is concentrated keep fewer tokens
than images whose attention is spread: the thresholds stay adaptive.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.errors import fail
from pipeline.models import GatedViT


def stage_shares(ratios: Sequence[float]) -> list[float]:
    """Cumulative keep ratios [r0, r1, ..] -> the share each stage keeps of its input: [r0, r1 / r0, ..]."""
    return [r / (ratios[i - 1] if i else 1.0) for i, r in enumerate(ratios)]


@torch.no_grad()
def fit_keep_ratios(model: GatedViT, images: torch.Tensor, ratios: Sequence[float],
                    batch_size: int = 32) -> torch.Tensor:
    """Set `model.thresholds` so the mean keep ratio after each stage is `ratios`; returns the lengths [N, S].

    Args:
        ratios: cumulative shares of patch tokens kept after each stage, non-increasing, in (0, 1].
    """
    from calib.search import quantile_threshold
    from calib.staged import StagedForward

    if len(ratios) != len(model.stages):
        raise fail(f"{len(ratios)} keep ratios for a model with {len(model.stages)} token stages {list(model.stages)}",
                   "give one cumulative keep ratio per stage (bench.keep_ratios), e.g. "
                   f"{[0.7, 0.49, 0.34][:len(model.stages)]}")
    shares = stage_shares(ratios)
    out = StagedForward(model.eval(), images, batch_size).run(lambda s, pooled: quantile_threshold(pooled, shares[s]))
    model.thresholds.copy_(torch.tensor(out.thresholds, dtype=model.thresholds.dtype))
    return out.lengths


def keep_ratios_of(lengths: torch.Tensor, num_prefix: int, num_patches: int) -> list[float]:
    """Mean share of patch tokens kept after each stage, from tokens kept [N, S] (prefix included)."""
    return [float(v) for v in ((lengths.double() - num_prefix) / num_patches).mean(0)]


@torch.no_grad()
def kept_tokens(model: GatedViT, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Tokens kept per stage [N, S] (prefix included) by the model's own hard-drop forward."""
    model = model.eval()
    if not model.stages:
        return torch.zeros(images.shape[0], 0, dtype=torch.int32)
    return torch.cat([model.forward_dropped(chunk)[1] for chunk in images.split(batch_size)])

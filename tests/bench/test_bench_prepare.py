"""Training-free thresholds hit the asked keep ratios per stage."""
from __future__ import annotations

import pytest
import torch

from pipeline.bench.prepare import fit_keep_ratios, keep_ratios_of, stage_shares
from pipeline.models import GatedViT, build_teacher
from tests.conftest import tiny_config


def test_stage_shares():
    assert stage_shares([0.7, 0.49, 0.343]) == pytest.approx([0.7, 0.7, 0.7], abs=1e-12)


def test_fit_keep_ratios(fmnist_root):
    cfg = tiny_config(fmnist_root)
    teacher = build_teacher(cfg)
    model = GatedViT(teacher.vit, stages=(2, 3)).eval()
    images = torch.randn(64, 1, 28, 28)
    lengths = fit_keep_ratios(model, images, [0.75, 0.5])
    ratios = keep_ratios_of(lengths, model.num_prefix, 16)
    # pooled quantiles: the mean is exact up to rounding to whole tokens over 64 images of 16 patches
    assert ratios == pytest.approx([0.75, 0.5], abs=1 / (64 * 16) + 1e-9)
    with torch.no_grad():
        assert torch.equal(model.forward_dropped(images)[1], lengths)  # the thresholds set reproduce them

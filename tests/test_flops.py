"""The analytic MAC counter against torch's measured count of multiply-adds."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import Config, GatesConfig, ModelConfig
from pipeline.flops import dense_macs
from pipeline.models import build_student, build_teacher

MODELS = [
    ModelConfig(arch="deit_tiny_patch16_224", img_size=224, in_chans=3, num_classes=1000),
    ModelConfig(arch="vit_small_patch16_224", img_size=224, in_chans=3, num_classes=1000),
    ModelConfig(arch="deit_tiny_distilled_patch16_224", img_size=224, in_chans=3, num_classes=1000),
    ModelConfig(arch="vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, patch_size=4, embed_dim=64,
                depth=6, num_heads=4),
]


def measured_macs(fn) -> float:
    """Multiply-adds torch counts (FLOPs / 2); the math SDPA backend makes attention's matmuls visible to it."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("cfg", MODELS, ids=lambda c: c.arch)
def test_dense_count_equals_measured(cfg):
    model = build_teacher(Config(model=cfg)).eval()
    images = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    assert dense_macs(model.geometry()) == measured_macs(lambda: model.vit(images))  # timm's own forward, exact


def test_deit_small_is_the_papers_4_6_gflops():
    model = build_teacher(Config(model=ModelConfig(arch="deit_small_patch16_224", img_size=224, in_chans=3,
                                                   num_classes=1000)))
    assert round(dense_macs(model.geometry()) / 1e9, 1) == 4.6


@pytest.mark.parametrize("cfg", MODELS[:1] + MODELS[-1:], ids=lambda c: c.arch)
def test_pruned_count_from_kept_tokens_equals_measured(cfg):
    model = build_student(Config(model=cfg, gates=GatesConfig(init_threshold=1.0, static=False))).eval()
    with torch.no_grad():
        for block in model.vit.blocks:  # spread the attention so stages drop tokens
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4.0
    images = torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        _, lengths = model.forward_dropped(images)
    assert (lengths < model.geometry().num_tokens).all()
    assert float(model.macs(lengths.double())[0]) == measured_macs(lambda: model.forward_dropped(images))

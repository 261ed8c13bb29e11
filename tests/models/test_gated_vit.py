"""The gated ViT on several timm architectures: soft vs hard paths, kept sets, batch invariance, gradients."""
import pytest
import torch

from pipeline.config import Config, GatesConfig, ModelConfig
from pipeline.models import build_student, token_ops

INVARIANCE_TOL = 1e-5  # fp32, CPU: DESIGN.md §3
PATH_TOL = 1e-5

ARCHS = {
    "custom-28": ModelConfig(arch="vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, patch_size=4,
                             embed_dim=64, depth=6, num_heads=4),
    "deit_tiny_patch16_224": ModelConfig(arch="deit_tiny_patch16_224", img_size=224, in_chans=3, num_classes=10),
    "vit_small_patch16_224": ModelConfig(arch="vit_small_patch16_224", img_size=224, in_chans=3, num_classes=10),
    "deit_tiny_distilled": ModelConfig(arch="deit_tiny_distilled_patch16_224", img_size=112, in_chans=3, num_classes=10),
    "dinov2_reg4": ModelConfig(arch="vit_small_patch14_reg4_dinov2", img_size=56, in_chans=3, num_classes=10, depth=4),
}


def _student(name: str, threshold: float = 1.0, **gates) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Config(model=ARCHS[name], gates=GatesConfig(init_threshold=threshold, static=False, **gates))
    model = build_student(cfg).eval()
    _sharpen_attention(model)
    return model


def _sharpen_attention(model) -> None:
    """Random init attends almost uniformly; scaling q/k weights makes scores spread, so stages really drop."""
    with torch.no_grad():
        for block in model.vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4.0


def _images(name: str, count: int, seed: int = 0) -> torch.Tensor:
    cfg = ARCHS[name]
    return torch.randn(count, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(ARCHS))
def test_keeping_every_token_reproduces_timm(name):
    model = _student(name)
    with torch.no_grad():
        model.thresholds.fill_(-1.0)  # every score is >= 0, so every token survives
        images = _images(name, 3)
        logits, lengths = model.forward_dropped(images)
        expected = model.vit(images)  # timm's own forward, untouched
    assert (lengths == model.geometry().num_tokens).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=PATH_TOL)


@pytest.mark.parametrize("name", list(ARCHS))
def test_masked_training_path_equals_physical_drop(name):
    model = _student(name, threshold=1.0)
    images = _images(name, 4)
    with torch.no_grad():
        masked, stats = model.forward_masked(images)
        dropped, lengths = model.forward_dropped(images)
    assert (lengths < model.geometry().num_tokens).any(), "the test needs a stage that drops tokens"
    torch.testing.assert_close(masked, dropped, rtol=0, atol=PATH_TOL)
    torch.testing.assert_close(stats.tokens, lengths.float(), rtol=0, atol=0)


def test_kept_set_is_exactly_the_threshold_rule():
    model = _student("custom-28", threshold=1.0)
    images = _images("custom-28", 6)
    with torch.no_grad():
        x = model.embed(images)
        scores = None
        for i, block in enumerate(model.vit.blocks[: model.stages[0]]):
            x, scores = block.forward_gated(x, num_prefix=1, want_scores=i in model.score_layers)
        _, lengths = model.forward_dropped(images)
    expected = 1 + token_ops.keep_mask(scores, model.thresholds[0], model.min_keep).sum(dim=1)
    assert lengths[:, 0].tolist() == expected.tolist()
    assert lengths[:, 0].tolist() == (1 + torch.maximum((scores > 1.0).sum(dim=1), torch.tensor(1))).tolist()


def test_inference_scores_equal_the_training_paths():
    """At inference a scoring layer reads the class row off its own attention; in training it keeps the fused
    kernel and a separate class-token pass. Both give the same output and scores (dropout is 0 here)."""
    model = _student("custom-28", threshold=1.0)
    attn = model.vit.blocks[model.score_layers[0]].attn
    assert attn.attn_drop.p == 0.0
    x = torch.randn(3, model.geometry().num_tokens, 64, generator=torch.Generator().manual_seed(4))
    valid = torch.ones(3, x.shape[1], dtype=torch.bool)
    valid[1, 20:] = False
    with torch.no_grad():
        for key_valid in (None, valid):
            out_eval, scores_eval = attn.forward_gated(x, key_valid, want_scores=True)
            attn.train()
            out_train, scores_train = attn.forward_gated(x, key_valid, want_scores=True)
            attn.eval()
            torch.testing.assert_close(out_eval, out_train, rtol=0, atol=PATH_TOL)
            torch.testing.assert_close(scores_eval, scores_train, rtol=0, atol=PATH_TOL)
    assert scores_eval[1, 19:].eq(float("-inf")).all()


def test_min_keep_is_respected_when_nothing_passes():
    model = _student("custom-28", min_keep=3)
    with torch.no_grad():
        model.thresholds.fill_(99.0)
        _, lengths = model.forward_dropped(_images("custom-28", 5))
    assert (lengths == 1 + 3).all()


@pytest.mark.parametrize("name", ["custom-28", "deit_tiny_distilled"])
def test_batch_invariance_over_sizes_and_compositions(name):
    model = _student(name, threshold=1.0)
    images = _images(name, 32, seed=3)
    with torch.no_grad():
        single = torch.cat([model.forward_dropped(images[i:i + 1])[0] for i in range(32)])
        lengths = model.forward_dropped(images)[1]
        assert len(set(lengths[:, -1].tolist())) > 1, "compositions must mix samples that keep different counts"
        for batch in (1, 2, 7, 32):
            for trial in range(2):  # two different shuffled compositions per batch size
                order = torch.randperm(32, generator=torch.Generator().manual_seed(batch * 10 + trial))
                out = torch.empty_like(single)
                for start in range(0, 32, batch):
                    idx = order[start:start + batch]
                    out[idx] = model.forward_dropped(images[idx])[0]
                torch.testing.assert_close(out, single, rtol=0, atol=INVARIANCE_TOL)
                assert (out.argmax(1) == single.argmax(1)).all()


def test_gradients_reach_thresholds_through_the_straight_through_mask():
    model = _student("custom-28", threshold=1.0).train()
    logits, stats = model.forward_masked(_images("custom-28", 8))
    (logits.square().mean() + model.macs(stats.tokens).mean() * 1e-7).backward()
    grad = model.thresholds.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_default_stages_scale_with_depth():
    from pipeline.models import default_stages

    assert default_stages(12) == (3, 6, 9)
    assert default_stages(6) == (2, 3, 5)
    assert default_stages(24) == (6, 12, 18)

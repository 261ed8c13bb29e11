"""gates.dropped_tokens=context: pruned tokens stop being updated but stay keys and values of every later attention.

The deployed forward (compacted kept tokens + a compacted context, any selection) is checked against a reference
written here in the other form: every token stays in one tensor, attention reads all of them, and only the active
ones take the residual updates.
"""
import copy

import pytest
import torch

from pipeline.config import Config, GatesConfig
from pipeline.flops import layer_macs
from pipeline.models import build_student, load_student, save_student, token_ops
from tests.models.test_gated_vit import ARCHS, INVARIANCE_TOL, PATH_TOL, _images, _sharpen_attention


def _context_student(name: str, threshold: float = 1.0, **gates) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Config(model=ARCHS[name], gates=GatesConfig(init_threshold=threshold, static=False,
                                                      dropped_tokens="context", **gates))
    model = build_student(cfg).eval()
    _sharpen_attention(model)
    return model


@torch.no_grad()
def _frozen_token_reference(model, images: torch.Tensor, counts=None, caps=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All tokens in one tensor; a dropped token keeps its value and stays a key. `counts`: fixed top-k per stage
    instead of the thresholds; `caps`: at most that many of the tokens that pass, the best-scored."""
    prefix = model.num_prefix
    x = model.embed(images)
    batch, tokens, _ = x.shape
    active = torch.ones(batch, tokens, dtype=torch.bool)
    scores, kept = None, []
    for i, block in enumerate(model.vit.blocks):
        if i in model.stages:
            s = model.stages.index(i)
            if counts is None:
                keep = token_ops.keep_mask(scores, model.thresholds[s], model.min_keep)
                if caps is not None:
                    kept_scores = torch.where(keep, scores, torch.full_like(scores, -torch.inf))
                    best = token_ops.top_rank_mask(kept_scores, caps[s])
                    keep = keep & best
            else:
                keep = token_ops.top_rank_mask(scores, counts[s])
            active = torch.cat([active[:, :prefix], keep & active[:, prefix:]], dim=1)
            kept.append(active.sum(dim=1).to(torch.int32))
        attn = block.attn
        h = block.norm1(x)
        q, k, v = attn.qkv(h).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        probs = ((q * attn.scale) @ k.transpose(-1, -2)).softmax(-1)
        heads = probs @ v
        out = attn.proj(heads.transpose(1, 2).reshape(batch, tokens, -1))
        gate = active[..., None].float()
        x = x + gate * block.ls1(out)
        x = x + gate * block.ls2(block.mlp(block.norm2(x)))
        if i in model.score_layers:
            weights = token_ops.head_importance(heads[:, :, 0])
            scores = token_ops.token_scores(probs[:, :, 0], weights, prefix, active)
    return model.head(x), torch.stack(kept, dim=1)


@pytest.mark.parametrize("name", ["custom-28", "deit_tiny_distilled"])
@pytest.mark.parametrize("impl", ["op", "native", "capped"])
def test_deployed_forward_equals_the_frozen_token_reference(name, impl):
    model = _context_student(name)
    patches = model.geometry().num_patches
    model = model.with_inference(impl, [patches] * len(model.stages) if impl == "capped" else None)
    images = _images(name, 6)
    expected, lengths = _frozen_token_reference(model, images)
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
    assert (kept < model.geometry().num_tokens).any() and len(set(kept[:, -1].tolist())) > 1
    assert kept.tolist() == lengths.tolist()
    torch.testing.assert_close(logits, expected, rtol=0, atol=PATH_TOL)


@pytest.mark.parametrize("caps, min_keep", [((10, 6, 3), 1), ((2, 2, 2), 5)])
def test_capped_truncation_sends_the_cut_tokens_to_the_context(caps, min_keep):
    """Tokens that pass the threshold but not the cap are dropped like any other: into the context."""
    model = _context_student("custom-28", min_keep=min_keep).with_inference("capped", caps)
    images = _images("custom-28", 6)
    expected, lengths = _frozen_token_reference(model, images, caps=caps)
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
    assert kept.tolist() == lengths.tolist() and (kept[:, 0] == 1 + caps[0]).any()
    torch.testing.assert_close(logits, expected, rtol=0, atol=PATH_TOL)


def test_fixed_counts_must_not_grow():
    from pipeline.errors import TokenGateError

    with pytest.raises(TokenGateError, match="grow from one stage to the next"):
        _context_student("custom-28").with_inference("fixed", (10, 20, 5))


def test_fixed_counts_equal_the_reference_and_fill_the_context_exactly():
    model = _context_student("custom-28")
    counts = (30, 12, 5)
    model = model.with_inference("fixed", counts)
    images = _images("custom-28", 5)
    expected, _ = _frozen_token_reference(model, images, counts)
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
        x = model.embed(images)
        _, scores = x, None
        for i in range(model.stages[0]):
            x, scores = model.vit.blocks[i].forward_gated(x, None, None, model.block_gates(i, x[:, 0], None), 1,
                                                          i in model.score_layers)
        context = model.select_stage(0, x, None, scores, None, model.thresholds[0]).context
    torch.testing.assert_close(logits, expected, rtol=0, atol=PATH_TOL)
    assert (kept == 1 + torch.tensor(counts)).all()
    assert context.tokens.shape[1] == 49 - 30 and context.valid.all()


def test_masked_training_path_equals_the_deployed_forward():
    model = _context_student("custom-28")
    images = _images("custom-28", 5)
    with torch.no_grad():
        masked, stats = model.forward_masked(images)
        dropped, lengths = model.forward_dropped(images)
    torch.testing.assert_close(masked, dropped, rtol=0, atol=PATH_TOL)
    torch.testing.assert_close(stats.tokens, lengths.float(), rtol=0, atol=0)


def test_context_changes_the_outputs_not_the_first_kept_set():
    model = _context_student("custom-28")
    discard = copy.deepcopy(model)
    discard.dropped_tokens = "discard"
    images = _images("custom-28", 5)
    with torch.no_grad():
        with_context, kept = model.forward_dropped(images)
        without, kept_discard = discard.forward_dropped(images)
    assert kept[:, 0].tolist() == kept_discard[:, 0].tolist()
    assert (with_context - without).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["custom-28", "deit_tiny_distilled"])
def test_batch_invariance_with_context(name):
    model = _context_student(name)
    images = _images(name, 12, seed=5)
    with torch.no_grad():
        single = torch.cat([model.forward_dropped(images[i:i + 1])[0] for i in range(12)])
        for batch in (2, 5, 12):
            order = torch.randperm(12, generator=torch.Generator().manual_seed(batch))
            out = torch.empty_like(single)
            for start in range(0, 12, batch):
                idx = order[start:start + batch]
                out[idx] = model.forward_dropped(images[idx])[0]
            torch.testing.assert_close(out, single, rtol=0, atol=INVARIANCE_TOL)


def test_a_stage_that_drops_nothing_leaves_an_empty_context():
    model = _context_student("custom-28")
    with torch.no_grad():
        model.thresholds.copy_(torch.tensor([-1.0, -1.0, 1.0]))  # the first two stages keep every token
        logits, kept = model.forward_dropped(_images("custom-28", 3))
        expected, _ = _frozen_token_reference(model, _images("custom-28", 3))
    assert (kept[:, :2] == 50).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=PATH_TOL)


def test_macs_count_the_context_keys_and_values():
    """Each context token costs its K and V projections (2 x C x width) and one attention column for every active
    token (2 x n x width: QK^T and AV), on top of what the same kept tokens cost when dropped tokens are discarded."""
    model = _context_student("custom-28")
    discard = copy.deepcopy(model)
    discard.dropped_tokens = "discard"
    lengths = torch.tensor([[40, 20, 8], [50, 50, 50]], dtype=torch.float64)
    per_layer = [50, 50, 40, 20, 20, 8]  # stages before blocks 2, 3, 5 of 6 (1 prefix + 49 patches)
    width = 4 * 16
    extra = sum((50 - n) * 64 * 2 * width + 2 * n * (50 - n) * width for n in per_layer)
    difference = model.macs(lengths) - discard.macs(lengths)
    assert difference.tolist() == [extra, 0.0]
    assert layer_macs(20, 64, 16, 4, 256, context=30) - layer_macs(20, 64, 16, 4, 256) == \
        30 * 64 * 2 * width + 2 * 20 * 30 * width


def test_gradients_reach_thresholds_with_context():
    model = _context_student("custom-28").train()
    logits, stats = model.forward_masked(_images("custom-28", 8))
    (logits.square().mean() + model.macs(stats.tokens).mean() * 1e-7).backward()
    grad = model.thresholds.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_checkpoints_record_what_becomes_of_dropped_tokens(tmp_path):
    from pipeline.artifacts import write_json
    from pipeline.checkpoints import read_header, read_state_dict, save_weights

    cfg = Config(model=ARCHS["custom-28"], gates=GatesConfig(static=False, dropped_tokens="context"))
    model = build_student(cfg)
    write_json(tmp_path / "config.json", Config(model=ARCHS["custom-28"], gates=GatesConfig(static=False)).to_dict())
    save_student(model, tmp_path / "student.safetensors", cfg)
    assert load_student(tmp_path).dropped_tokens == "context"  # the header wins over config.json
    header = read_header(tmp_path / "student.safetensors")
    del header["dropped_tokens"]  # a checkpoint from before the option: its tokens were discarded
    save_weights(tmp_path / "old.safetensors", read_state_dict(tmp_path / "student.safetensors"), header)
    assert load_student(tmp_path, filename="old.safetensors").dropped_tokens == "discard"


def test_unknown_mode_is_refused():
    from pipeline.errors import TokenGateError
    from pipeline.models.gated_vit import GatedViT

    vit = build_student(Config(model=ARCHS["custom-28"], gates=GatesConfig(static=False))).vit
    with pytest.raises(TokenGateError, match="dropped_tokens='keep' is not one of"):
        GatedViT(vit, stages=(2,), dropped_tokens="keep")

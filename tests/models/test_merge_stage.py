"""The merge stage: bipartite scores and partners, size-weighted merging, proportional attention, and a GatedViT with
a merge stage before block 0 in every forward (dropped, packed, staged) and its cost.

Tolerances: exact (hand-worked values, to float32 rounding: 1e-6) for the pure functions; 1e-5 for logits across
batch compositions and forwards (DESIGN.md §3)."""
import copy
from dataclasses import replace

import pytest
import torch

from pipeline.errors import TokenGateError
from pipeline.flops import merge_macs
from pipeline.models import token_ops
from pipeline.models.gated_vit import GatedViT
from pipeline.models.packed import PackedForward
from pipeline.models.staged import StagedForward
from pipeline.config import Config, ModelConfig
from pipeline.flops import embed_and_head_macs, layer_macs
from pipeline.models import build_teacher

EXACT = 1e-6
INVARIANCE_TOL = 1e-5


def test_bipartite_scores_pair_each_a_token_with_its_most_similar_b_token():
    # prefix, then patches A0 B0 A1 B1 A2 (A: even patch positions, B: odd)
    x = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1], [0.0, 2.0]]])
    scores, partner = token_ops.bipartite_keep_scores(x, num_prefix=1)
    assert partner.tolist() == [[1, 1, 0]]  # A0 -> B1 (1, 0.1), A1 (1, 1) -> B1, A2 (0, 2) -> B0 (0, 1)
    assert torch.isinf(scores[0, 1::2]).all() and (scores[0, 1::2] > 0).all(), "B tokens are always kept"
    unit = torch.nn.functional.normalize
    expected = [-(unit(x[0, 1], dim=0) @ unit(x[0, 4], dim=0)), -(unit(x[0, 3], dim=0) @ unit(x[0, 4], dim=0)), -1.0]
    assert scores[0, 0::2].tolist() == pytest.approx([float(e) for e in expected], abs=EXACT)


def test_merging_averages_by_size_into_the_partner():
    x = torch.tensor([[[5.0], [1.0], [2.0], [4.0], [8.0], [16.0]]])  # prefix, A0 B0 A1 B1 A2
    sizes = torch.tensor([[1.0, 1.0, 3.0, 2.0, 1.0, 1.0]])
    partner = torch.tensor([[0, 0, 1]])
    merged = torch.tensor([[True, True, False]])  # A0 and A1 into B0; A2 stays
    out, new_sizes = token_ops.merge_into_partners(x, sizes, merged, partner, num_prefix=1)
    # B0 = (3 * 2 + 1 * 1 + 2 * 4) / (3 + 1 + 2); A rows and B1 unchanged
    assert out[0, :, 0].tolist() == pytest.approx([5.0, 1.0, 15 / 6, 4.0, 8.0, 16.0], abs=EXACT)
    assert new_sizes.tolist() == [[1.0, 1.0, 6.0, 2.0, 1.0, 1.0]]


def test_proportional_attention_equals_duplicated_keys():
    """A row of size 2 with bias log 2 draws exactly the attention of two identical keys: why merging duplicates
    loses nothing."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    duplicated = token_ops.masked_attention(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), None)
    bias = torch.tensor([[2.0, 1.0, 1.0]]).log()
    weighted = token_ops.masked_attention(q, k, v, None, key_bias=bias)
    explicit = token_ops.attention_with_class_row(q, k, v, 4 ** -0.5, key_bias=bias[:, None, :])[0]
    assert torch.allclose(weighted, duplicated, atol=EXACT) and torch.allclose(explicit, duplicated, atol=EXACT)


TINY = ModelConfig(arch="vit_tiny_patch16_224", img_size=32, in_chans=3, num_classes=10, patch_size=4, embed_dim=32,
                   depth=4, num_heads=2)


def tiny_vit(arch: str = "vit_tiny_patch16_224"):
    """A 4-block ViT on 32x32 images, 64 patches (`TINY`, with `arch`)."""
    torch.manual_seed(0)
    vit = build_teacher(Config(model=replace(TINY, arch=arch))).vit
    with torch.no_grad():  # sharper random attention, so the pruning stages drop different counts
        for block in vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4.0
    return vit


def merge_model(dropped_tokens: str = "context", arch: str = "vit_tiny_patch16_224") -> GatedViT:
    model = GatedViT(tiny_vit(arch), stages=(2, 3), dropped_tokens=dropped_tokens, merge_block=0).eval()
    with torch.no_grad():
        model.thresholds.copy_(torch.tensor([-0.2, 0.9, 1.1]))
    return model


@pytest.mark.parametrize("dropped_tokens", ["context", "discard"])
def test_merge_stage_is_batch_invariant_and_packed_agrees(dropped_tokens):
    model = merge_model(dropped_tokens)
    images = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        logits, lengths = model.forward_dropped(images)
        alone = torch.cat([model.forward_dropped(images[i:i + 1])[0] for i in range(7)])
        assert (logits - alone).abs().max() <= INVARIANCE_TOL
        num_patches = model.geometry().num_patches
        assert (lengths[:, 0] < model.num_prefix + num_patches).any(), "some tokens merged"
        assert (lengths[:, 0] >= model.num_prefix + num_patches // 2).all(), "B tokens never merge"
        for varlen in (False, True):
            packed_logits, packed_lengths = PackedForward(model, varlen=varlen)(images)
            assert torch.equal(packed_lengths, lengths)
            assert (packed_logits - logits).abs().max() <= INVARIANCE_TOL
        batch_one = [PackedForward(model, batch_one=True)(images[i:i + 1]) for i in range(7)]
        assert torch.equal(torch.cat([k for _, k in batch_one]), lengths)  # sizes as key bias, no layout
        assert (torch.cat([out for out, _ in batch_one]) - alone).abs().max() <= INVARIANCE_TOL


def test_merge_thresholds_at_the_extremes():
    model = merge_model()
    images = torch.randn(3, 3, 32, 32)
    patches, prefix = model.geometry().num_patches, model.num_prefix
    with torch.no_grad():
        model.thresholds[0] = -1.0  # the initial value: only identical tokens merge (none in random images)
        assert (model.forward_dropped(images)[1][:, 0] == prefix + patches).all()
        model.thresholds[0] = 1.0  # -similarity never exceeds 1: every A token merges
        assert (model.forward_dropped(images)[1][:, 0] == prefix + patches // 2).all()


def test_staged_forward_follows_the_merge_stage():
    model = merge_model()
    images = torch.randn(6, 3, 32, 32)
    thresholds = [float(t) for t in model.thresholds.detach()]
    out = StagedForward(model, images, batch_size=4).run(lambda s, pooled: thresholds[s])
    with torch.no_grad():
        logits, lengths = model.forward_dropped(images)
    assert torch.equal(out.lengths, lengths) and (out.logits - logits).abs().max() <= INVARIANCE_TOL


def test_cost_counts_the_matching_and_no_context_for_merged_tokens():
    model = merge_model()
    geom = model.geometry()
    merged, kept = 10, (30, 20)  # tokens after the merge stage: N - 10; then 30 and 20 (prefix included)
    after = geom.num_tokens - merged
    counts = torch.tensor([[after, *kept]], dtype=torch.float64)
    tokens = [after, after, kept[0], kept[1]]  # blocks 0-1 after the merge, block 2 after stage 1, block 3 after 2
    context = [0, 0, after - kept[0], after - kept[1]]  # merged tokens are gone, not context
    expected = embed_and_head_macs(geom) + merge_macs(geom.num_patches, geom.embed_dim) + sum(
        layer_macs(n, geom.embed_dim, geom.head_dim, geom.heads[i], geom.mlp_hidden[i], context=c)
        for i, (n, c) in enumerate(zip(tokens, context)))
    assert float(model.macs(counts)[0]) == pytest.approx(expected, rel=1e-12)
    assert model.fewest_tokens().tolist() == [[geom.num_prefix + geom.num_patches // 2, 2, 2]]


def test_merge_stage_is_refused_where_it_cannot_run():
    with pytest.raises(TokenGateError, match="before the first token stage"):
        GatedViT(tiny_vit(), stages=(2, 3), merge_block=2)
    model = merge_model().train()
    with pytest.raises(TokenGateError, match="training-free"):
        model.forward_masked(torch.randn(2, 3, 32, 32))


def test_merge_stage_with_several_prefix_tokens_never_merges_them():
    model = merge_model(arch="deit_tiny_distilled_patch16_224")
    assert model.num_prefix == 2
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        x = model.embed(images)
        scores, partner = token_ops.bipartite_keep_scores(x, model.num_prefix)
        assert scores.shape[1] == x.shape[1] - 2
        logits, lengths = model.forward_dropped(images)
        alone = torch.cat([model.forward_dropped(images[i:i + 1])[0] for i in range(4)])
    assert (logits - alone).abs().max() <= INVARIANCE_TOL and (lengths[:, 0] >= 2 + 32).all()

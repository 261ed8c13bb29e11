"""The packed token layout (DESIGN.md §3, the `packed` export flavor), over a GatedViT's own layers.

After the first token stage the residual stream is kept as packed rows [sum_b L_b, C]: the kept tokens of every
sample, one after the other, with no padding. Everything that acts per token (LayerNorms, qkv, proj, the MLP) runs
on those rows, so its cost follows each sample's own token count, not the batch's largest. Attention runs sample by
sample (`varlen_op`, expanded to an If/Loop at export) on long sequences, and on the per-sample view [B, K, C]
(K = the batch's largest kept count, padded keys masked) on short ones and in the layers that score a stage, whose
class-attention row feeds the next stage's [B, K] scores.

Choices that keep the exported graph cheap on ONNX Runtime's CPU provider (docs/method.md has the measurements):
- padded positions of the per-sample view gather their sample's class-token row instead of a zero row: their keys
  are masked and their query rows dropped, so any finite value works and no concatenation is needed;
- padded keys are masked by an additive bias of MASK_BIAS = -50, not -inf or a boolean mask. A boolean mask makes
  the exporter guard every attention matrix with IsNaN + Where, and -inf leaves the CPU Softmax's fast exp path. A
  padded key is a copy of its sample's class-token key, so its logit is at most the row maximum and its weight is
  below e^-50 of the largest: zero in fp32 sums, so batch invariance holds;
- selection gathers the kept rows straight from the packed rows; with min_keep = 1 the top-up is an ArgMax (first
  index on ties, NaN as -inf: exactly `token_ops.top_rank_mask(scores, 1)`), not the O(N^2) pairwise ranking;
- heads are split on the packed rows and gathered head-first, and reshapes after a selection take -1 for the
  data-dependent size, which saves shape nodes in every block.

`PackedForward(model)(images)` returns (logits, kept tokens per stage) like `forward_dropped`, with the same values
up to float rounding (tests/models/test_packed.py).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.varlen_op import varlen_attention
from pipeline.models import GatedViT, token_ops
from pipeline.models.layers import GatedAttention, GatedBlock

MASK_BIAS = -50.0  # added to the attention logits of padded keys; see the module docstring
VARLEN_MIN_TOKENS = 129  # per-sample attention pays from about here on ONNX Runtime CPU (docs/method.md)


def per_sample_attention_pays(model: GatedViT) -> bool:
    """Whether the export should attend sample by sample: the loop costs a fixed ~22 nodes per sample and block,
    padding costs in proportion to K^2, so it pays for long token sequences (DeiT-S, 197) and not for short ones
    (the default Fashion-MNIST model, 50)."""
    return model.vit.patch_embed.num_patches + model.num_prefix >= VARLEN_MIN_TOKENS


class Layout(NamedTuple):
    """Where each sample's tokens live in the packed rows."""

    valid: torch.Tensor  # [B, K] bool: position j of sample b holds a token
    # [B * K] int64: the packed row of each position b * K + j; padding repeats the sample's first row
    index: torch.Tensor
    flat: torch.Tensor  # [R] int64: each packed row's position b * K + j in the per-sample view
    bias: torch.Tensor  # [B, 1, K] float: 0 for valid keys, MASK_BIAS for padding (broadcasts over heads and queries)
    starts: torch.Tensor  # [B] int64: each sample's first packed row
    lengths: torch.Tensor  # [B] int64: each sample's packed rows


def layout_from_lengths(lengths: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> Layout:
    """The packed layout of samples holding lengths[b] leading tokens out of `width` positions.

    Written for a short exported graph (each ONNX Runtime node has a fixed cost whatever its size): a sample's
    rows start at the exclusive cumulative sum of the lengths, padding points at that first row, and every tensor is
    built once per stage in the shape its users take (flat indices, a bias that broadcasts), not reshaped per block."""
    lengths = lengths.to(torch.int64)  # the TokenSelect op counts in int32; the loop's slices take int64
    positions = torch.arange(width, device=lengths.device)
    valid = positions[None, :] < lengths[:, None]
    starts = lengths.cumsum(0) - lengths
    index = (starts[:, None] + torch.where(valid, positions[None, :], 0)).reshape(-1)
    flat = valid.reshape(-1).nonzero().squeeze(1)
    bias = torch.where(valid, torch.zeros((), dtype=dtype), torch.full((), MASK_BIAS, dtype=dtype))
    return Layout(valid, index, flat, bias[:, None, :], starts, lengths)


def to_padded(rows: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[R, D] packed rows -> [B, K, D]; padded positions hold a copy of their sample's first row."""
    return rows[layout.index].reshape(layout.valid.shape[0], -1, rows.shape[-1])


def to_packed(padded: torch.Tensor, layout: Layout) -> torch.Tensor:
    """[B, K, D] -> [R, D]: the valid positions' rows, sample after sample."""
    return padded.reshape(-1, padded.shape[-1])[layout.flat]


def keep_mask(scores: torch.Tensor, threshold: torch.Tensor, min_keep: int) -> torch.Tensor:
    """`token_ops.keep_mask`, with an O(N) top-up for min_keep = 1 (ArgMax takes the first index on ties; NaN ranks
    as -inf there, so it is replaced before the ArgMax, which would otherwise pick it)."""
    if min_keep != 1:
        return token_ops.keep_mask(scores, threshold, min_keep)
    ranked = torch.where(torch.isnan(scores), float("-inf"), scores)
    best = ranked.argmax(dim=1, keepdim=True)
    return (scores > threshold).scatter(1, best, True)


def packed_attention(attn: GatedAttention, h: torch.Tensor, layout: Layout, num_prefix: int,
                     want_scores: bool, varlen: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GatedAttention.forward_gated at inference (no gates), with qkv and proj on packed rows.

    The heads are split off on the packed rows ([R, 3C] -> [3, H, R, d], a transpose of R rows). With `varlen`, a
    layer that does not score attends sample by sample (`varlen.varlen_attention`: no padding). Otherwise the
    per-sample view is gathered head-first ([3, H, B, K, d]), so attention runs on [H, B, K, d] and nothing of size
    B * K is transposed: with a batch, K is the largest kept count and B * K exceeds R by the padding (40%+ on
    DeiT-S). A scoring layer keeps that view: its class-attention row feeds the [B, K] scores of the next stage."""
    batch = layout.valid.shape[0]
    qkv = attn.qkv(h).reshape(-1, 3, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)
    plain_qk = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
    if varlen and not want_scores and plain_qk:
        out = varlen_attention(qkv, layout.starts, layout.lengths, layout.flat, attn.scale)
        return attn.proj_drop(attn.proj(out)), None
    qkv = qkv.index_select(2, layout.index).reshape(3, attn.num_heads, batch, -1, attn.head_dim)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = layout.bias.to(q.dtype)
    scores = None
    if want_scores:  # the class row of this layer's own attention (token_ops.attention_with_class_row)
        out, weights_attn, head_out = token_ops.attention_with_class_row(q, k, v, attn.scale, key_bias=bias,
                                                                         heads_first=True)
        scores = token_ops.token_scores(weights_attn, token_ops.head_importance(head_out), num_prefix, layout.valid)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.reshape(attn.num_heads, -1, attn.head_dim).index_select(1, layout.flat)
    out = out.permute(1, 0, 2).reshape(-1, attn.attn_dim)
    return attn.proj_drop(attn.proj(out)), scores


def packed_block(block: GatedBlock, rows: torch.Tensor, layout: Layout, num_prefix: int,
                 want_scores: bool, varlen: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GatedBlock.forward_gated at inference on packed rows; removed sub-blocks (None) are skipped as there."""
    scores = None
    if block.attn is not None:
        a, scores = packed_attention(block.attn, block.norm1(rows), layout, num_prefix, want_scores, varlen)
        rows = rows + block.drop_path1(block.ls1(a))
    if block.mlp is not None:
        rows = rows + block.drop_path2(block.ls2(block.mlp(block.norm2(rows))))
    return rows, scores


class PackedForward(nn.Module):
    """`forward_dropped` with the packed layout from the first token stage on (inference, no gates).

    `varlen`: attention of the layers that do not score runs sample by sample (`varlen`'s If once exported), not on
    the padded per-sample view. The export turns it on; PyTorch runs leave it off, where a Python loop over the
    samples (and its host syncs) would cost more than the padding. Layers with a q/k norm keep the padded view."""

    def __init__(self, model: GatedViT, varlen: bool = False):
        super().__init__()
        if model.static_gates is not None or model.group_gates is not None:
            raise ValueError("the packed layout runs sliced models without gates (slice the student first)")
        if not model.stages:
            raise ValueError("the packed layout needs at least one token stage")
        if model.dropped_tokens != "discard":
            raise ValueError("the packed layout discards dropped tokens; a model that keeps them as context runs "
                             "padded")
        self.model, self.varlen = model, varlen
        self.eval()  # inference only: dropout and drop-path off, and the exporter sees eval mode

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        blocks, stages, prefix = m.vit.blocks, m.stages, m.num_prefix
        x = m.embed(images)
        scores: Optional[torch.Tensor] = None
        for i in range(stages[0]):  # every token is kept before the first stage: the plain dense layout
            x, scores = blocks[i].forward_gated(x, None, None, m.block_gates(i, x[:, 0], None), prefix,
                                                want_scores=i in m.score_layers)
        rows, layout, kept = x.reshape(-1, x.shape[-1]), None, []
        for i in range(stages[0], len(blocks)):
            if i in stages:
                rows, layout, lengths = self._select(rows, layout, scores, stages.index(i))
                kept.append(lengths)
            rows, scores = packed_block(blocks[i], rows, layout, prefix, want_scores=i in m.score_layers,
                                        varlen=self.varlen)
        return m.head(rows[layout.index.reshape(x.shape[0], -1)[:, :prefix]]), torch.stack(kept, dim=1).to(torch.int32)

    def _select(self, rows: torch.Tensor, layout: Optional[Layout], scores: torch.Tensor,
                stage: int) -> tuple[torch.Tensor, Layout, torch.Tensor]:
        """Keep the stage's tokens: new packed rows, their layout and each sample's token count."""
        m = self.model
        batch = scores.shape[0]
        keep = keep_mask(scores, m.thresholds[stage], m.min_keep)
        mask = torch.cat([keep.new_ones(batch, m.num_prefix), keep], dim=1)  # positions of the per-sample view
        chosen = mask.reshape(-1).nonzero().squeeze(1)
        source = chosen if layout is None else layout.index[chosen]
        lengths = mask.sum(dim=1)
        width = lengths.max().item()  # a data-dependent size, as in select_op's native flavor
        torch._check(width >= m.num_prefix + 1)  # the prefix plus at least one patch (min_keep >= 1)
        torch._check(width <= mask.shape[1])
        return rows[source], layout_from_lengths(lengths, width, rows.dtype), lengths

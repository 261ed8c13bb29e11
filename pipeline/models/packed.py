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
- the padded view is one gather of the projected rows and one transpose into heads, and reshapes after a selection
  take -1 for the data-dependent size, which saves shape nodes in every block.

At batch 1 none of that bookkeeping is needed: a single sample's rows already are its per-sample view, with no
padding to mask. `PackedForward(model, batch_one=True)` runs that case on a layout of lengths alone (no gathers into
and out of the view, no masks, no key bias but a merge stage's sizes; only kept rows are gathered); the export ships
it as the batch-1 branch of the file (pipeline/export/batch_one.py).

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
    """Where each sample's tokens live in the packed rows. The batch-one layout (`batch_one_layout`) has no valid,
    index or flat, and a bias only after a merge stage (the sizes): its rows are the per-sample view as they stand."""

    valid: Optional[torch.Tensor]  # [B, K] bool: position j of sample b holds a token
    # [B * K] int64: the packed row of each position b * K + j; padding repeats the sample's first row
    index: Optional[torch.Tensor]
    flat: Optional[torch.Tensor]  # [R] int64: each packed row's position b * K + j in the per-sample view
    # [B, 1, K] float: 0 for valid keys, MASK_BIAS for padding (broadcasts over heads and queries)
    bias: Optional[torch.Tensor]
    starts: torch.Tensor  # [B] int64: each sample's first packed row
    lengths: torch.Tensor  # [B] int64: each sample's packed rows
    row_bias: Optional[torch.Tensor] = None  # [R] float after a merge stage: log(size) of each row, in row order

    @property
    def batch_one(self) -> bool:
        return self.index is None


def batch_one_layout(lengths: torch.Tensor) -> Layout:
    """The layout of a batch of one sample holding all lengths[0] rows: nothing to gather, pad or mask."""
    lengths = lengths.to(torch.int64)
    return Layout(None, None, None, None, torch.zeros_like(lengths), lengths)


def take(rows: torch.Tensor, index: Optional[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """rows.index_select(dim, index), or `rows` itself where the index is the identity (None: batch one)."""
    return rows if index is None else rows.index_select(dim, index)


def view_rows(layout: Optional[Layout], positions: torch.Tensor) -> torch.Tensor:
    """The packed rows at `positions` of the per-sample view [B * K]: the positions themselves before the first stage
    (the plain layout) and at batch one, where the rows are the view."""
    return positions if layout is None or layout.batch_one else layout.index[positions]


def layout_of(lengths: torch.Tensor, dtype: torch.dtype, batch_one: bool, least: int = 0) -> Layout:
    """The packed layout of samples holding lengths[b] leading tokens, at least `least` in the longest; the
    batch-one layout when `batch_one`."""
    return batch_one_layout(lengths) if batch_one else layout_from_lengths(lengths, packed_width(lengths, least), dtype)


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


def keep_mask(scores: torch.Tensor, threshold: torch.Tensor, min_keep: int) -> torch.Tensor:
    """`token_ops.keep_mask`, with an O(N) top-up for min_keep = 1 (ArgMax takes the first index on ties; NaN ranks
    as -inf there, so it is replaced before the ArgMax, which would otherwise pick it)."""
    if min_keep != 1:
        return token_ops.keep_mask(scores, threshold, min_keep)
    ranked = torch.where(torch.isnan(scores), float("-inf"), scores)
    best = ranked.argmax(dim=1, keepdim=True)
    return (scores > threshold).scatter(1, best, True)


class Context(NamedTuple):
    """Context mode: the dropped tokens, kept as frozen keys and values of every later attention, as packed rows."""

    rows: torch.Tensor  # [Rc, C]: each sample's dropped tokens (as they were when dropped), sample after sample
    layout: Layout  # where each sample's context rows are
    # [R + Rc] int64: rows of cat([kept rows, context rows]) in key order, sample after sample: the sample's kept
    # tokens, then its context (own keys first, so they sit where its queries sit); None at batch one (that order)
    keys: Optional[torch.Tensor]
    key_layout: Layout  # where each sample's keys are in that order
    sizes: Optional[torch.Tensor] = None  # [Rc] after a merge stage: the input tokens each context row stands for


def with_sizes(layout: Layout, sizes: Optional[torch.Tensor]) -> Layout:
    """`layout` whose key bias also weighs each key by log(size) (proportional attention after a merge stage);
    `sizes` [R] of the packed rows the layout indexes. Built once per stage, so the blocks pay nothing more."""
    if sizes is None:
        return layout
    if layout.batch_one:  # the sample's rows are its keys, in order
        return layout._replace(bias=sizes.log()[None, None, :], row_bias=sizes.log())
    bias = torch.where(layout.valid, sizes[layout.index].reshape(layout.valid.shape).log(),
                       torch.full((), MASK_BIAS, dtype=sizes.dtype))
    return layout._replace(bias=bias[:, None, :], row_bias=sizes.log())


def packed_width(lengths: torch.Tensor, least: int = 0) -> int:
    """max(lengths) as a size the exporter treats as data-dependent (at least `least`)."""
    width = lengths.max().item()
    torch._check(width >= least)
    return width


def interleave(first: Layout, second: Layout, first_rows: int) -> Optional[torch.Tensor]:
    """Rows of cat([A, B]) (A and B packed, `first_rows` rows in A), sample after sample: the sample's rows of A,
    then its rows of B. None at batch one, where that is cat([A, B]) itself."""
    if first.batch_one:
        return None
    batch = first.valid.shape[0]
    source = torch.cat([first.index.reshape(batch, first.valid.shape[1]),
                        first_rows + second.index.reshape(batch, second.valid.shape[1])], dim=1)
    valid = torch.cat([first.valid, second.valid], dim=1)
    return source.reshape(-1)[valid.reshape(-1).nonzero().squeeze(1)]


def with_keys(rows: torch.Tensor, context_rows: torch.Tensor, context_layout: Layout, layout: Layout,
              sizes: Optional[torch.Tensor] = None, context_sizes: Optional[torch.Tensor] = None) -> Context:
    """A stage's context plus the key order of its blocks (`Context.keys`); after a merge stage the keys are
    weighed by the sizes of the kept rows (`sizes`) and of the context rows (`context_sizes`)."""
    keys = interleave(layout, context_layout, rows.shape[0])
    key_lengths = layout.lengths + context_layout.lengths
    key_layout = layout_of(key_lengths, rows.dtype, layout.batch_one, least=1)
    if sizes is not None:
        # key_layout.index points into the key order; the sizes in that order are those of cat([kept, context])
        key_layout = with_sizes(key_layout, take(torch.cat([sizes, context_sizes], dim=0), keys))
    return Context(context_rows, context_layout, keys, key_layout, context_sizes)


class Queries(NamedTuple):
    """A context stage right before the last block: only the kept rows query that block, every row stays a key.

    The last block's output feeds the head alone, so what such a stage drops are queries: its dropped tokens would
    be context rows read by this one block only. Instead of moving them into a context (new row order, key order
    and key layout: about 60 graph nodes), the block keeps its keys where they are and gathers the kept rows'
    queries from one qkv product over every row; same values as the context path up to float summation order."""

    source: torch.Tensor  # [R'] int64: the packed row of each kept token (the query rows, sample after sample)
    layout: Layout  # where each sample's query rows are


def per_sample_view(rows: torch.Tensor, index: Optional[torch.Tensor], batch: int, parts: int,
                    heads: int) -> torch.Tensor:
    """[parts, H, B, K, d] from packed rows [R, parts * H * d]: one row gather into the padded per-sample order (none
    at batch one) and one transpose, a few graph nodes fewer per block than splitting the heads on the rows and
    gathering each part."""
    dim = rows.shape[1] // (parts * heads)
    view = take(rows, index).reshape(-1, parts, heads, dim).permute(1, 2, 0, 3)  # [parts, H, B * K, d]
    return view.reshape(parts, heads, batch, -1, dim)


def packed_attention(attn: GatedAttention, h: torch.Tensor, layout: Layout, num_prefix: int, want_scores: bool,
                     varlen: bool, context: Optional[Context] = None, context_h: Optional[torch.Tensor] = None,
                     queries: Optional[Queries] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GatedAttention.forward_gated at inference (no gates), with the projections on packed rows.

    With `varlen`, a layer that does not score attends sample by sample (`varlen_op.varlen_attention`: no padding),
    its heads split off on the packed rows ([R, 3C] -> [3, H, R, d]). Otherwise the projected rows are gathered into
    the padded per-sample order and split into heads with one transpose ([3, H, B, K, d], `per_sample_view`; K is the
    batch's largest kept count): fewer nodes than splitting the rows first, for a transpose of B * K rows, not R. A
    scoring layer keeps that view: its class-attention row feeds the [B, K] scores of the next stage.

    With a `context` (its rows normalised: `context_h`), the keys and values of sample b are its own tokens', then
    its context rows' (one K/V product over both, as `GatedAttention._with_context`); only its own tokens query and
    are scored. With `queries`, `h` and `layout` are every key row's, and only the rows `queries.source` query."""
    heads, dim = attn.num_heads, attn.head_dim
    if varlen and layout.batch_one:
        raise ValueError("a batch-one layout has no packed offsets for per-sample attention (varlen=False)")
    weight, bias, split = attn.qkv.weight, attn.qkv.bias, attn.attn_dim
    if context is None and queries is None:
        qkv_rows, key_layout = attn.qkv(h), layout  # [R, 3C]: every row queries, and is a key and a value
        q_rows = kv_rows = None
    elif context is None:  # queries only: one product over every row, then the kept rows' queries (one Gemm
        # fewer, for queries of rows the MACs do not count: a few MACs against an ONNX Runtime node)
        every = attn.qkv(h)  # [R, 3C]
        q_rows, kv_rows = every[queries.source, :split], every[:, split:]
        qkv_rows, key_layout, layout = None, layout, queries.layout
    else:  # a context: the own and context rows are keys and values, only the own (or kept) rows query
        h_q = h if queries is None else h[queries.source]
        q_rows = F.linear(h_q, weight[:split], None if bias is None else bias[:split])  # [R, C]
        both = take(torch.cat([h, context_h], dim=0), context.keys)
        kv_rows = F.linear(both, weight[split:], None if bias is None else bias[split:])  # [Rk, 2C]
        qkv_rows, key_layout = None, context.key_layout
        layout = layout if queries is None else queries.layout
    plain_qk = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
    if varlen and not want_scores and plain_qk:
        if qkv_rows is not None:
            qkv = qkv_rows.reshape(-1, 3, heads, dim).permute(1, 2, 0, 3)  # [3, H, R, d]
            q, kv = qkv[0], qkv[1:]
        else:
            q = q_rows.reshape(-1, heads, dim).permute(1, 0, 2)
            kv = kv_rows.reshape(-1, 2, heads, dim).permute(1, 2, 0, 3)  # [2, H, Rk, d]
        out = varlen_attention(q, kv, layout.starts, layout.lengths, key_layout.starts, key_layout.lengths,
                               layout.flat, attn.scale, key_layout.row_bias)
        return attn.proj_drop(attn.proj(out)), None
    batch = layout.lengths.shape[0]
    if qkv_rows is not None:
        q, k, v = per_sample_view(qkv_rows, layout.index, batch, 3, heads).unbind(0)
    else:
        q = per_sample_view(q_rows, layout.index, batch, 1, heads).squeeze(0)
        k, v = per_sample_view(kv_rows, key_layout.index, batch, 2, heads).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    # [B, 1, K]: broadcasts over heads first and queries; None at batch one before a merge stage (no padding)
    key_bias = None if key_layout.bias is None else key_layout.bias.to(q.dtype)
    scores = None
    if want_scores:  # the class row of this layer's own attention (token_ops.attention_with_class_row)
        out, weights_attn, head_out = token_ops.attention_with_class_row(q, k, v, attn.scale, key_bias=key_bias,
                                                                         heads_first=True)
        own = weights_attn[..., :q.shape[-2]]  # a sample's own keys come first (positions < its length)
        scores = token_ops.token_scores(own, token_ops.head_importance(head_out), num_prefix, layout.valid)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias)
    out = take(out.reshape(heads, -1, dim), layout.flat, dim=1)  # [H, B, K, d] -> [H, R, d]
    out = out.permute(1, 0, 2).reshape(-1, attn.attn_dim)
    return attn.proj_drop(attn.proj(out)), scores


def packed_block(block: GatedBlock, rows: torch.Tensor, layout: Layout, num_prefix: int, want_scores: bool,
                 varlen: bool, context: Optional[Context] = None,
                 queries: Optional[Queries] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """GatedBlock.forward_gated at inference on packed rows; removed sub-blocks (None) are skipped as there.
    With `queries`, `rows` and `layout` are the keys' and the block returns the query rows only."""
    scores = None
    if block.attn is not None:
        context_h = None if context is None else block.norm1(context.rows)
        a, scores = packed_attention(block.attn, block.norm1(rows), layout, num_prefix, want_scores, varlen,
                                     context, context_h, queries)
        rows = rows if queries is None else rows[queries.source]
        rows = rows + block.drop_path1(block.ls1(a))
    elif queries is not None:
        rows = rows[queries.source]
    if block.mlp is not None:
        rows = rows + block.drop_path2(block.ls2(block.mlp(block.norm2(rows))))
    return rows, scores


class PackedForward(nn.Module):
    """`forward_dropped` with the packed layout from the first token stage on (inference, no gates).

    `varlen`: attention of the layers that do not score runs sample by sample (`varlen`'s If once exported), not on
    the padded per-sample view. The export turns it on; PyTorch runs leave it off, where a Python loop over the
    samples (and its host syncs) would cost more than the padding. Layers with a q/k norm keep the padded view.

    `batch_one`: the forward of a batch of one image (`batch_one_layout`), for the export's batch-1 branch; it
    refuses any other batch size."""

    def __init__(self, model: GatedViT, varlen: bool = False, batch_one: bool = False):
        super().__init__()
        if model.static_gates is not None or model.group_gates is not None:
            raise ValueError("the packed layout runs sliced models without gates (slice the student first)")
        if not model.stages:
            raise ValueError("the packed layout needs at least one token stage")
        self.model, self.varlen, self.batch_one = model, varlen and not batch_one, batch_one
        self.eval()  # inference only: dropout and drop-path off, and the exporter sees eval mode

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if self.batch_one and images.shape[0] != 1:
            raise ValueError(f"this forward runs batches of one image, not {images.shape[0]}")
        blocks, stages, prefix = m.vit.blocks, m.stages, m.num_prefix
        x = m.embed(images)
        scores: Optional[torch.Tensor] = None
        for i in range(stages[0]):  # every token is kept before the first stage: the plain dense layout
            x, scores = blocks[i].forward_gated(x, None, None, m.block_gates(i, x[:, 0], None), prefix,
                                                want_scores=i in m.score_layers)
        rows, layout, context, sizes, kept = x.reshape(-1, x.shape[-1]), None, None, None, []
        for i in range(stages[0], len(blocks)):
            queries = None
            if i in stages:
                s = stages.index(i)
                if m.is_merge_stage(s):  # the first stage: x is still the plain [B, N, C] layout
                    scores, partner = m.stage_inputs(s, x, scores)
                    rows, sizes = self._merge(x, scores, partner, s)
                if self._drops_queries_only(s):
                    source, query_layout, lengths = self._kept(layout, self._keep(scores, s))
                    queries = Queries(source, query_layout)
                    if layout is None:  # the only stage: every sample's N tokens are its keys
                        full = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
                        layout = (batch_one_layout(full) if self.batch_one
                                  else layout_from_lengths(full, x.shape[1], x.dtype))
                else:
                    rows, layout, context, sizes, lengths = self._select(rows, layout, scores, s, context, sizes)
                kept.append(lengths)
            rows, scores = packed_block(blocks[i], rows, layout, prefix, want_scores=i in m.score_layers,
                                        varlen=self.varlen, context=context, queries=queries)
            layout = layout if queries is None else queries.layout
        heads_in = rows[None, :prefix] if layout.batch_one else rows[layout.index.reshape(x.shape[0], -1)[:, :prefix]]
        return m.head(heads_in), torch.stack(kept, dim=1).to(torch.int32)

    def _drops_queries_only(self, stage: int) -> bool:
        """A context stage before the last block: its dropped tokens stay keys of that block and nothing reads
        their outputs, so it only removes query rows (`Queries`)."""
        m = self.model
        return (m.dropped_tokens == "context" and not m.is_merge_stage(stage)
                and m.stages[stage] == len(m.vit.blocks) - 1)

    def _keep(self, scores: torch.Tensor, stage: int) -> torch.Tensor:
        """The stage's kept patches. The merge stage needs no min_keep top-up: its B tokens score +inf."""
        m = self.model
        if m.is_merge_stage(stage):
            return scores > m.thresholds[stage]
        return keep_mask(scores, m.thresholds[stage], m.min_keep)

    def _merge(self, x: torch.Tensor, scores: torch.Tensor, partner: torch.Tensor,
               stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The merge stage on the plain layout: each merged token averaged into its partner (`_select` drops it
        next); returns the rows [B * N, C] and their sizes [B * N]."""
        m = self.model
        merged = self._keep(scores, stage)[:, 0::2].logical_not()
        x, sizes = token_ops.merge_into_partners(x, x.new_ones(x.shape[:2]), merged, partner, m.num_prefix)
        return x.reshape(-1, x.shape[-1]), sizes.reshape(-1)

    def _kept(self, layout: Optional[Layout], keep: torch.Tensor) -> tuple[torch.Tensor, Layout, torch.Tensor]:
        """The kept tokens (`keep` [B, N'] of the patches, the prefix added): their rows among `layout`'s packed rows
        (the per-sample view's positions before the first stage), the packed layout they make, each sample's count."""
        m = self.model
        mask = torch.cat([keep.new_ones(keep.shape[0], m.num_prefix), keep], dim=1)  # positions of the view
        chosen = mask.reshape(-1).nonzero().squeeze(1)
        source = view_rows(layout, chosen)
        lengths = mask.sum(dim=1)
        if self.batch_one:  # the exporter learns what packed_width tells it: the prefix plus at least one patch
            torch._check(source.shape[0] >= m.num_prefix + 1)
            return source, batch_one_layout(lengths), lengths
        width = packed_width(lengths, m.num_prefix + 1)  # the prefix plus at least one patch (min_keep >= 1)
        torch._check(width <= mask.shape[1])
        return source, layout_from_lengths(lengths, width, m.thresholds.dtype), lengths

    def _select(self, rows: torch.Tensor, layout: Optional[Layout], scores: torch.Tensor, stage: int,
                context: Optional[Context], sizes: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Layout, Optional[Context], Optional[torch.Tensor], torch.Tensor]:
        """Keep the stage's tokens: new packed rows, their layout, the context (context mode: grown by the tokens
        this stage drops), the kept rows' sizes (after a merge stage; `sizes` are those of `rows`) and each sample's
        token count."""
        m = self.model
        keep = self._keep(scores, stage)
        source, new_layout, lengths = self._kept(layout, keep)
        kept_sizes = None if sizes is None else sizes[source]
        if m.dropped_tokens != "context" or m.is_merge_stage(stage):
            return rows[source], with_sizes(new_layout, kept_sizes), context, kept_sizes, lengths
        dropped = torch.cat([keep.new_zeros(keep.shape[0], m.num_prefix), keep.logical_not()], dim=1)
        dropped = dropped if layout is None or layout.batch_one else dropped & layout.valid
        taken = dropped.reshape(-1).nonzero().squeeze(1)
        dropped_source = view_rows(layout, taken)
        dropped_rows = rows[dropped_source]
        dropped_sizes = None if sizes is None else sizes[dropped_source]
        dropped_lengths = dropped.sum(dim=1)
        if context is None:
            context_rows, context_lengths, context_sizes = dropped_rows, dropped_lengths, dropped_sizes
        else:
            dropped_layout = layout_of(dropped_lengths, rows.dtype, self.batch_one)
            merged = interleave(context.layout, dropped_layout, context.rows.shape[0])
            context_rows = take(torch.cat([context.rows, dropped_rows], dim=0), merged)
            context_sizes = None if sizes is None else take(torch.cat([context.sizes, dropped_sizes], dim=0), merged)
            context_lengths = context.layout.lengths + dropped_lengths
        context_layout = layout_of(context_lengths, rows.dtype, self.batch_one)
        kept_rows = rows[source]
        return (kept_rows, with_sizes(new_layout, kept_sizes),
                with_keys(kept_rows, context_rows, context_layout, new_layout, kept_sizes, context_sizes),
                kept_sizes, lengths)

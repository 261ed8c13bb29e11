"""Token-pruning algorithms as pure tensor functions (no modules, no state).

These are the reference semantics of DESIGN.md §3. The timm glue (`layers.py`, `gated_vit.py`), the ONNX Runtime
op (`pipeline/ops`) and the CUDA kernels (`plugins/`) are all checked against the functions here.

Conventions: `x` is [B, N, C] with the first P = num_prefix tokens being class/distillation/register tokens, and
`scores` is [B, N - P] for the patch tokens. Padded (already dropped) positions carry a score of -inf.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6  # representable in fp16 (1e-12 would underflow to a subnormal)


def class_attention(
    q_cls: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_valid: torch.Tensor | None,
    heads_first: bool = False, key_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the class token over all keys, and each head's class-token output.

    Args:
        q_cls: [B, H, d] queries of the class token ([H, B, d] if heads_first).
        k, v: [B, H, N, d] keys and values ([H, B, N, d] if heads_first: the packed layout's attention).
        key_valid: [B, N] bool, False for keys that are padding or dropped; None if all are valid.
        key_bias: [B, 1, N] float added to the logits instead of a mask (the packed layout's, one Add in the exported
            graph where a mask takes three); it must leave padded keys a negligible weight.
    Returns:
        attn [B, H, N] (rows sum to 1 over valid keys) and head_out [B, H, d], in either layout.
    """
    kv = "hbnd" if heads_first else "bhnd"
    logits = torch.einsum(f"{'hbd' if heads_first else 'bhd'},{kv}->bhn", q_cls * scale, k)
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    if key_bias is not None:
        logits = logits + key_bias
    attn = logits.softmax(dim=-1)
    return attn, torch.einsum(f"bhn,{kv}->bhd", attn, v)


def attention_with_class_row(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_valid: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None, heads_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention written out, returning its output and the class row that `class_attention` would recompute.

    A layer that scores tokens at inference takes the class row from its own attention matrix instead of a second
    class-token pass: the same values (to float rounding) for about ten fewer nodes per scoring layer in an exported
    graph (DeiT-S: 32 over three), which is what an ONNX Runtime run pays for at batch 1. Training
    keeps the fused kernel and the detached `class_attention` (no gradient from the scores into q, k, v); graphs for
    TensorRT keep the separate pass too (`gated_vit.Inference.shared_scores`).

    Args:
        q, k, v: [B, H, N, d] ([H, B, N, d] if heads_first).
        key_valid: [B, N] bool, False for padded or dropped keys; key_bias: [B, 1, N] float added to the logits.
    Returns:
        out [B, H, N, d] (input layout), class attention [B, H, N] and each head's class-token output [B, H, d].
    """
    logits = (q * scale) @ k.transpose(-1, -2)  # [B, H, N, N]; [H, B, N, N] heads first, where [B, 1, N] broadcasts
    if key_valid is not None:
        mask = key_valid[:, None, :] if heads_first else key_valid[:, None, None, :]
        logits = logits.masked_fill(~mask, float("-inf"))
    if key_bias is not None:
        logits = logits + (key_bias if heads_first else key_bias[:, None])
    probs = logits.softmax(dim=-1)
    out = probs @ v
    cls_attn, head_out = probs[..., 0, :], out[..., 0, :]
    if heads_first:
        cls_attn, head_out = cls_attn.transpose(0, 1), head_out.transpose(0, 1)
    return out, cls_attn, head_out


def head_importance(head_out: torch.Tensor, head_gate: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head weights: the norm of each head's class-token output, normalised to sum to 1 across heads.

    `head_gate` ([H] or [B, H]) zeroes closed heads, so a pruned head never votes on which tokens survive.
    """
    importance = head_out.norm(dim=-1)
    if head_gate is not None:
        importance = importance * head_gate
    return importance / importance.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def token_scores(attn: torch.Tensor, weights: torch.Tensor, num_prefix: int, key_valid: torch.Tensor | None) -> torch.Tensor:
    """Head-importance-weighted class attention of each patch token, relative to a uniform share.

    A score of 1.0 means the token gets exactly the mean attention of the sample's valid patch tokens, so one
    threshold means the same thing at every stage and image size. Invalid (padded/dropped) positions get -inf.

    Args:
        attn: [B, H, N] class attention.  weights: [B, H] head weights summing to 1.
    Returns:
        [B, N - P] scores.
    """
    raw = (attn * weights[:, :, None]).sum(dim=1)[:, num_prefix:]
    if key_valid is None:
        count = raw.shape[1]
        valid = None
    else:
        valid = key_valid[:, num_prefix:]
        count = valid.sum(dim=1, keepdim=True).to(raw.dtype)
        raw = raw.masked_fill(~valid, 0.0)
    rel = raw * count / raw.sum(dim=1, keepdim=True).clamp_min(_EPS)
    return rel if valid is None else rel.masked_fill(~valid, float("-inf"))


def descending_rank(scores: torch.Tensor) -> torch.Tensor:
    """Each score's 0-based rank in its row, largest first; ties go to the lower index; NaN ranks as -inf.

    Pairwise comparisons instead of a sort: exact tie semantics in standard ONNX ops, O(N^2) but tiny next to
    attention's N^2 * d.
    """
    s = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))  # NaN ranks as -inf
    a, b = s[:, :, None], s[:, None, :]  # a: the token ranked, b: every other token
    index = torch.arange(s.shape[1], device=s.device)
    earlier = index[None, :] < index[:, None]  # [i, j]: j comes before i
    beats = (b > a) | ((b == a) & earlier[None])
    return beats.sum(dim=2)


def top_rank_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """True for each row's `count` highest scores (see `descending_rank` for ties and NaN)."""
    return descending_rank(scores) < count


def keep_mask(scores: torch.Tensor, threshold: torch.Tensor | float, min_keep: int) -> torch.Tensor:
    """The kept patch tokens: score > threshold, topped up to `min_keep` by rank (DESIGN.md §3)."""
    keep = scores > threshold
    if min_keep > 0:
        keep = keep | top_rank_mask(scores, min(min_keep, scores.shape[1]))
    return keep


def soft_keep(scores: torch.Tensor, threshold: torch.Tensor, tau: float) -> torch.Tensor:
    """sigmoid((score - threshold) / tau): the differentiable stand-in for `keep_mask` in training."""
    return torch.sigmoid((scores - threshold) / tau)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Forward value of `hard` exactly (the bracket is exactly 0), gradient of `soft`."""
    return hard.to(soft.dtype) + (soft - soft.detach())


def token_select_reference(
    x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor | float, num_prefix: int, min_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokengate::TokenSelect` v1, the reference.

    Returns y [B, K, C] (prefix tokens, then kept patch tokens in original order, then zero rows) and
    lengths [B] int32 (P + kept patches), with K = max(lengths): a data-dependent size.
    """
    keep = keep_mask(scores, threshold, min_keep)
    counts = keep.sum(dim=1)
    k_patch = int(counts.max()) if counts.numel() else 0
    return compact_kept(x, keep, counts, num_prefix, k_patch)


def token_select_capped(
    x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor | float, num_prefix: int, min_keep: int,
    cap: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenSelect with a static output size P + cap, in ops that every runtime builds (TopK with constant k).

    Equals `token_select_reference` (up to extra zero rows) whenever a sample keeps at most `cap` patches;
    a sample above the cap keeps its `cap` highest-scoring kept patches.
    """
    keep = capped_keep_mask(scores, threshold, min_keep, cap)
    return compact_kept(x, keep, keep.sum(dim=1), num_prefix, min(cap, scores.shape[1]))


def capped_keep_mask(scores: torch.Tensor, threshold: torch.Tensor | float, min_keep: int, cap: int) -> torch.Tensor:
    """`keep_mask`, then at most the `cap` highest-scoring of the kept patches."""
    keep = keep_mask(scores, threshold, min_keep)
    if cap < scores.shape[1]:
        keep = keep & top_rank_mask(torch.where(keep, scores, torch.full_like(scores, float("-inf"))), cap)
    return keep


def fixed_keep_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The fixed-rate baseline's kept patches: each sample's `count` best."""
    return top_rank_mask(scores, min(count, scores.shape[1]))


def token_select_fixed(x: torch.Tensor, scores: torch.Tensor, num_prefix: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed-rate baseline (EViT / DynamicViT style): every sample keeps its `count` best patches, no threshold."""
    keep = fixed_keep_mask(scores, count)
    return compact_kept(x, keep, keep.sum(dim=1), num_prefix, min(count, scores.shape[1]))


def compact_kept(
    x: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor, num_prefix: int, k_patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable compaction of kept patch rows to the front, padded with zero rows to `k_patch`."""
    num_patches = keep.shape[1]
    # Kept token i gets key N - i (unique, larger for earlier tokens); TopK then lists them in original order.
    key = torch.where(keep, num_patches - torch.arange(num_patches, device=x.device), 0)
    order = torch.topk(key, k_patch, dim=1).indices
    patches = torch.gather(x[:, num_prefix:], 1, order[..., None].expand(-1, -1, x.shape[2]))
    valid = torch.arange(k_patch, device=x.device)[None, :] < counts[:, None]
    patches = torch.where(valid[..., None], patches, torch.zeros_like(patches))
    y = torch.cat([x[:, :num_prefix], patches], dim=1)
    return y, (counts + num_prefix).to(torch.int32)


def add_to_context(
    context: torch.Tensor | None, context_valid: torch.Tensor | None, patches: torch.Tensor, dropped: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The context tokens after a stage: the earlier context plus this stage's dropped patch rows, compacted.

    Args:
        context, context_valid: [B, Kc, C] and [B, Kc] bool, or None before the first stage.
        patches: [B, K, C] the patch rows the stage chose from; dropped: [B, K] bool, the valid ones it dropped.
        size: rows of the result, at least every sample's count and at most the rows available.
    Returns:
        [B, size, C] rows (earlier context first, each part in its original order, then zero rows) and their
        [B, size] validity.
    """
    rows = patches if context is None else torch.cat([context, patches], dim=1)
    mask = dropped if context_valid is None else torch.cat([context_valid, dropped], dim=1)
    counts = mask.sum(dim=1)
    tokens, _ = compact_kept(rows, mask, counts, 0, size)
    return tokens, torch.arange(size, device=rows.device)[None, :] < counts[:, None]


def bipartite_keep_scores(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A merge stage's scores: how much each patch token would lose by merging, and into which token it would go.

    The patch tokens alternate between set A (patch positions 0, 2, 4, ...) and set B (1, 3, ...). Each A token's
    partner is the B token most similar to it (cosine similarity of the tokens themselves; the first on ties), and
    its keep score is minus that similarity: a threshold keeps the A tokens least like any B token and merges the
    rest. B tokens score +inf, so they are always kept (and absorb the A tokens merged into them).

    Args:
        x: [B, N, C], every token present (merge stages come before any pruning stage).
    Returns:
        scores [B, N - P] (+inf on B tokens) and partner [B, |A|] int64: each A token's partner as an index into B.
    """
    best, partner = best_partners(x, num_prefix)
    never = torch.full_like(x[:, num_prefix + 1::2, 0], float("inf"))
    return interleave_sets(-best[..., None], never[..., None])[..., 0], partner


def best_partners(metric: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite matching of the patch rows of `metric` [B, N, C]: set A (patch positions 0, 2, ...) against set B
    (1, 3, ...). Returns each A row's highest cosine similarity to a B row [B, |A|] and that B row's index
    [B, |A|] (the first on ties). The merge stage matches the tokens themselves, the ToMe-style baseline their keys."""
    patches = metric[:, num_prefix:]
    unit = patches / patches.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    similarity = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)  # [B, |A|, |B|]
    best, partner = similarity.max(dim=-1)
    return best, partner


def interleave_sets(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of set A [B, |A|, C] and set B [B, |B|, C] back in patch order (A, B, A, B, ...; |A| - |B| is 0 or 1):
    one concatenation and a gather with a constant order (index_select: one ONNX Gather, where `[:, order]`
    exports as GatherND between two Transposes)."""
    count = a.shape[1] + b.shape[1]
    position = torch.arange(count, device=a.device)
    order = torch.where(position % 2 == 0, position // 2, a.shape[1] + position // 2)
    return torch.cat([a, b], dim=1).index_select(1, order)


def merge_into_partners(x: torch.Tensor, sizes: torch.Tensor, merged: torch.Tensor, partner: torch.Tensor,
                        num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every merged A token into its B partner, weighted by the input tokens each row stands for.

    Args:
        x: [B, N, C]; sizes: [B, N] (1 for a token that has absorbed nothing); merged: [B, |A|] bool, the A tokens
        that leave; partner: [B, |A|] int64 index into B (`bipartite_keep_scores`).
    Returns:
        x and sizes where each B row is the size-weighted mean of itself and the A rows merged into it, its size
        their sum; A rows are unchanged (the merged ones are dropped next).
    """
    patches, patch_sizes = x[:, num_prefix:], sizes[:, num_prefix:]
    xb, sb = merge_sets(patches[:, 0::2], patches[:, 1::2], patch_sizes[:, 0::2], patch_sizes[:, 1::2], merged,
                        partner)
    return (torch.cat([x[:, :num_prefix], interleave_sets(patches[:, 0::2], xb)], dim=1),
            torch.cat([sizes[:, :num_prefix], interleave_sets(patch_sizes[:, 0::2, None], sb[..., None])[..., 0]], 1))


def merge_sets(xa: torch.Tensor, xb: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, merged: torch.Tensor,
               partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The B rows [B, |B|, C] and sizes [B, |B|] after the `merged` A rows [B, |A|, C] (sizes sa) joined their
    partners: size-weighted means. The sums are one [|B|, |A|] one-hot product per sample (a standard MatMul,
    which every runtime builds; ScatterElements' add-reduction is not supported everywhere)."""
    target = torch.arange(xb.shape[1], device=xb.device)[None, :, None]
    joins = ((partner[:, None, :] == target) & merged[:, None, :]).to(xa.dtype)  # [B, |B|, |A|]
    moved = joins @ torch.cat([xa * sa[..., None], sa[..., None]], dim=-1)  # [B, |B|, C + 1]: mass and size
    total = sb + moved[..., -1]
    return (xb * sb[..., None] + moved[..., :-1]) / total[..., None], total


def key_valid_from_lengths(lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[B, K] bool: True for the first lengths[b] tokens of each sample."""
    return torch.arange(num_tokens, device=lengths.device)[None, :] < lengths[:, None]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None,
                     dropout_p: float = 0.0, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA with padded/dropped keys masked by a boolean mask, so the fused kernel stays in use; a `key_bias` [B, N]
    (log sizes after a merge stage) makes it an additive float mask, -inf on the masked keys."""
    mask = None if key_valid is None else key_valid[:, None, None, :]
    if key_bias is not None:
        bias = key_bias[:, None, None, :]
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

"""`tokengate::token_select`: the TokenSelect contract as a PyTorch custom op, plus its two standard-op flavors.

The custom op keeps the selection one opaque node, so the ONNX exporter can emit the fused
`tokengate::TokenSelect` node (plugin flavor). `native` inlines the same semantics in standard ops with a
data-dependent K; `capped` uses a static K per stage (DESIGN.md §3). `fixed` is the fixed-keep-count baseline.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch

from pipeline.models import token_ops

SelectImpl = Literal["op", "native", "capped", "fixed"]
SELECT_IMPLS: tuple[str, ...] = ("op", "native", "capped", "fixed")


@torch.library.custom_op("tokengate::token_select", mutates_args=())
def token_select(
    x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor, num_prefix: int, min_keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenSelect v1; see `token_ops.token_select_reference`."""
    return token_ops.token_select_reference(x, scores, threshold, num_prefix, min_keep)


@token_select.register_fake
def _token_select_fake(x, scores, threshold, num_prefix, min_keep):
    ctx = torch.library.get_ctx()
    k = ctx.new_dynamic_size(min=num_prefix + 1)
    return x.new_empty(x.shape[0], k, x.shape[2]), x.new_empty(x.shape[0], dtype=torch.int32)


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor, num_prefix: int, min_keep: int,
    impl: SelectImpl = "op", cap: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Physically drop tokens with the chosen implementation; all three agree up to padding."""
    if impl == "op":
        y, lengths = token_select(x, scores, threshold, num_prefix, min_keep)
        torch._check(y.shape[1] <= x.shape[1])
        return y, lengths
    if impl == "native":
        return _native_select(x, scores, threshold, num_prefix, min_keep)
    if impl in ("capped", "fixed"):
        if cap is None:
            raise ValueError(f"{impl} selection needs a token count per stage")
        if impl == "fixed":  # the fixed-rate baseline ignores the threshold
            return token_ops.token_select_fixed(x, scores, num_prefix, cap)
        return token_ops.token_select_capped(x, scores, threshold, num_prefix, min_keep, cap)
    raise ValueError(f"unknown select impl {impl!r}; expected one of {SELECT_IMPLS}")


def kept_mask(
    scores: torch.Tensor, threshold: torch.Tensor, min_keep: int, impl: SelectImpl = "op", cap: Optional[int] = None,
) -> torch.Tensor:
    """[B, K] bool: the patch tokens `select_tokens` keeps with the same arguments (the context needs the rest)."""
    if impl == "fixed":
        return token_ops.fixed_keep_mask(scores, cap)
    if impl == "capped":
        return token_ops.capped_keep_mask(scores, threshold, min_keep, cap)
    return token_ops.keep_mask(scores, threshold, min_keep)


def context_size(impl: SelectImpl, num_patches: int, min_keep: int, caps: Optional[Sequence[int]]) -> int:
    """Rows of the context after a stage: the most patches a sample can have dropped by then, at least 1 so no tensor
    is empty. A sample keeps at least min(min_keep, every cap so far) patches (fixed counts: exactly the stage's
    count, counts being non-increasing), so it has dropped at most the rest.

    Static on purpose, not the batch's largest count: context keys come first in attention, so a size that followed
    the batch would move a sample's own keys with its batch's composition, and the kernels' blocked sums (and int8
    roundings after them) with them. The price is attention and K/V projections over padding rows early on."""
    caps = list(caps or [])
    least = caps[-1] if impl == "fixed" else min([min_keep, *caps])
    return max(1, num_patches - least)


def _native_select(x, scores, threshold, num_prefix, min_keep):
    """The reference in standard ops, written so torch.export sees K as one data-dependent size."""
    keep = token_ops.keep_mask(scores, threshold, min_keep)
    counts = keep.sum(dim=1)
    # The clamp changes no value, but it writes the upper bound N into the graph (Min(k, N) feeding TopK), which
    # TensorRT(-RTX) needs to size the data-dependent tensors.
    k_patch = counts.max().clamp(max=scores.shape[1]).item()
    torch._check(k_patch >= 1)
    torch._check(k_patch <= scores.shape[1])
    return token_ops.compact_kept(x, keep, counts, num_prefix, k_patch)

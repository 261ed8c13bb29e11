"""`tokengate::token_select`: the TokenSelect contract as a PyTorch custom op, plus its two standard-op flavors.

The custom op keeps the selection one opaque node, so the ONNX exporter can emit the fused
`tokengate::TokenSelect` node (plugin flavor). `native` inlines the same semantics in standard ops with a
data-dependent K; `capped` uses a static K per stage (DESIGN.md §3). `fixed` is the fixed-keep-count baseline.
"""
from __future__ import annotations

from typing import Literal, Optional

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

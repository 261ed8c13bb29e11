"""Analytic multiply-accumulate count of a (gated, sliced, token-pruned) ViT.

Reported as "GFLOPs" in the ViT papers' convention (DeiT-S = 4.6 G), which counts one multiply-add as one FLOP.
The same formulas work on Python numbers (reporting) and on tensors (the differentiable budget loss), so the
number the budget trains against is the number the reports print.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

Number = Union[int, float, torch.Tensor]


@dataclass(frozen=True)
class Geometry:
    """What the MAC count depends on; per-layer head counts and MLP widths (0 = sub-block removed)."""

    embed_dim: int
    in_chans: int
    patch_area: int  # pixels per patch
    num_patches: int
    num_prefix: int
    num_classes: int
    num_heads_out: int  # classifier heads (2 for distilled DeiT)
    head_dim: int
    heads: tuple[int, ...]
    mlp_hidden: tuple[int, ...]

    @property
    def depth(self) -> int:
        return len(self.heads)

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix


def layer_macs(
    tokens: Number, dim: int, head_dim: int, heads: Number, mlp_hidden: Number,
    attn_on: Number = 1, mlp_on: Number = 1, context: Number = 0,
) -> Number:
    """MACs of one block over `tokens` tokens: qkv, QK^T, AV, proj, MLP. A layer that scores tokens costs no more at
    inference: the scores read the class row of its own attention (`token_ops.attention_with_class_row`).

    `context` tokens (dropped tokens kept as frozen keys and values, `gates.dropped_tokens: context`) cost their key
    and value projections and one more attention column each; they get no query, proj or MLP."""
    width = heads * head_dim
    keys = tokens + context
    attention = (tokens * dim * 3 * width + context * dim * 2 * width + 2 * tokens * keys * width
                 + tokens * width * dim)
    mlp = 2 * tokens * dim * mlp_hidden
    return attn_on * attention + mlp_on * mlp


def merge_macs(patches: int, dim: int) -> int:
    """MACs of a merge stage (`token_ops.bipartite_keep_scores`, `merge_into_partners`) over `patches` patch tokens:
    normalising them (patches * dim), every A token's similarity with every B token (|A| |B| dim), and the one-hot
    product that sums the merged rows and sizes into their partners (|B| |A| (dim + 1))."""
    a, b = (patches + 1) // 2, patches // 2
    return patches * dim + a * b * dim + b * a * (dim + 1)


def embed_and_head_macs(geom: Geometry) -> int:
    patch = geom.num_patches * geom.in_chans * geom.patch_area * geom.embed_dim
    return patch + geom.num_heads_out * geom.embed_dim * geom.num_classes


def model_macs(geom: Geometry, tokens_per_layer: Sequence[Number]) -> Number:
    """MACs for one image given the tokens each layer processes (ints, or per-sample tensors)."""
    total: Number = embed_and_head_macs(geom)
    for i, tokens in enumerate(tokens_per_layer):
        h, m = geom.heads[i], geom.mlp_hidden[i]
        total = total + layer_macs(tokens, geom.embed_dim, geom.head_dim, h, m,
                                   attn_on=int(h > 0), mlp_on=int(m > 0))
    return total


def dense_macs(geom: Geometry) -> int:
    """MACs with every token kept in every layer."""
    return int(model_macs(geom, [geom.num_tokens] * geom.depth))


def tokens_per_layer(num_tokens: int, depth: int, stages: Sequence[int], kept: torch.Tensor) -> list[Number]:
    """Expand per-stage token counts [B, S] to per-layer counts: layer i sees the latest stage at or before i."""
    out: list[Number] = []
    current: Number = num_tokens
    stage = 0
    for layer in range(depth):
        if stage < len(stages) and layer == stages[stage]:
            current = kept[:, stage]
            stage += 1
        out.append(current)
    return out


def gmacs(value: Number) -> float:
    return float(value) / 1e9

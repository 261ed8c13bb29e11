"""Structural gates (USDC): static head / channel / block gates, dynamic group gates, sub-group splitting.

Static gates use a sigmoid with a straight-through hard mask, not Hard-Concrete: the forward pass always runs the
exact 0/1 structure that slicing will keep, so there is no train/deploy gap and no sampling noise to average out
in the few epochs a CPU budget allows. The gradient reaches the logits through the sigmoid.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
from torch import nn

from pipeline.models.layers import BlockGates
from pipeline.models.token_ops import straight_through

SubgroupSplit = Literal["none", "uniform", "random", "recursive"]


def ste_gate(logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 forward value, sigmoid gradient."""
    return straight_through(hard, torch.sigmoid(logits))


class StaticGates(nn.Module):
    """One logit per head, per MLP hidden channel and per attention / MLP sub-block of every layer.

    Closing every head (channel) of a layer removes its whole attention (MLP) sub-block, bias included, so the
    gated model and the sliced model compute the same function. A layer whose attention scores feed a token-pruning
    stage always keeps its attention and at least its strongest head.
    """

    def __init__(self, heads: Sequence[int], channels: Sequence[int], score_layers: Sequence[int], init: float):
        super().__init__()
        self.head_logits = nn.ParameterList([nn.Parameter(torch.full((h,), init)) for h in heads])
        self.channel_logits = nn.ParameterList([nn.Parameter(torch.full((m,), init)) for m in channels])
        self.attn_logits = nn.Parameter(torch.full((len(heads),), init))
        self.mlp_logits = nn.Parameter(torch.full((len(heads),), init))
        self.score_layers = frozenset(score_layers)

    def hard(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(open heads, open channels, attention kept, MLP kept) as bool tensors, after the layer rules."""
        heads = self.head_logits[layer] > 0
        channels = self.channel_logits[layer] > 0
        if layer in self.score_layers and not bool(heads.any()):
            heads = heads.clone()
            heads[self.head_logits[layer].argmax()] = True
        attn = (self.attn_logits[layer] > 0) & heads.any()
        if layer in self.score_layers:
            attn = torch.ones_like(attn)
        mlp = (self.mlp_logits[layer] > 0) & channels.any()
        return heads, channels, attn, mlp

    def layer(self, layer: int) -> BlockGates:
        heads, channels, attn, mlp = self.hard(layer)
        return BlockGates(
            heads=ste_gate(self.head_logits[layer], heads),
            channels=ste_gate(self.channel_logits[layer], channels),
            attn=ste_gate(self.attn_logits[layer], attn),
            mlp=ste_gate(self.mlp_logits[layer], mlp),
        )


class GroupGates(nn.Module):
    """Dynamic attention / MLP / head gates decided once per group of samples (USDC).

    A per-layer linear router reads the group's mean class token at the block input. In training the batch is
    split into sub-groups (`split_sizes`), each deciding for itself; at inference the whole batch is one group.
    Layers whose attention scores tokens never skip their attention.
    """

    def __init__(self, dim: int, heads: Sequence[int], score_layers: Sequence[int] = (), init_bias: float = 2.0):
        super().__init__()
        self.score_layers = frozenset(score_layers)
        self.routers = nn.ModuleList([nn.Linear(dim, 2 + h) for h in heads])
        for router in self.routers:
            nn.init.zeros_(router.weight)
            nn.init.constant_(router.bias, init_bias)

    def layer(self, layer: int, cls_tokens: torch.Tensor, group_ids: Optional[torch.Tensor]) -> BlockGates:
        """Per-sample gate values [B] / [B, H]; samples of one group share them."""
        onehot = _group_onehot(cls_tokens.shape[0], group_ids, cls_tokens.device, cls_tokens.dtype)  # [B, G]
        means = (onehot.T @ cls_tokens) / onehot.sum(0)[:, None]  # [G, C]
        logits = self.routers[layer](means)  # [G, 2 + H]
        values = onehot @ ste_gate(logits, logits > 0)  # [B, 2 + H]
        attn = None if layer in self.score_layers else values[:, 0]
        return BlockGates(heads=values[:, 2:], attn=attn, mlp=values[:, 1])


def _group_onehot(batch: int, group_ids: Optional[torch.Tensor], device, dtype) -> torch.Tensor:
    if group_ids is None:
        return torch.ones(batch, 1, device=device, dtype=dtype)
    return torch.nn.functional.one_hot(group_ids, int(group_ids.max()) + 1).to(dtype)


def combine(a: BlockGates, b: BlockGates) -> BlockGates:
    """Elementwise product of two gate sets (None = open)."""
    def mul(x, y):
        if x is None or y is None:
            return y if x is None else x
        return x * y
    return BlockGates(*(mul(x, y) for x, y in zip(a, b)))


def split_sizes(batch: int, mode: SubgroupSplit, generator: torch.Generator) -> list[int]:
    """Sizes of the sub-groups one training batch is split into (they sum to `batch`, each at least 1).

    none: one group. uniform: equal groups of a size drawn from {1, 2, 4, ..}. random: a random composition.
    recursive: keep a group of n whole with probability 1 / (1 + log2 n), else cut it at a random point and
    recurse on both parts (sample-weighted group sizes come out about uniform over octaves).
    """
    if batch < 1:
        raise ValueError("batch must be positive")
    if mode == "none":
        return [batch]
    if mode == "uniform":
        choices = [1 << i for i in range(batch.bit_length()) if (1 << i) <= batch]
        size = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        return [size] * (batch // size) + ([batch % size] if batch % size else [])
    if mode == "random":
        groups = int(torch.randint(1, batch + 1, (1,), generator=generator))
        cuts = torch.randperm(batch - 1, generator=generator)[: groups - 1].add(1).sort().values.tolist()
        edges = [0, *cuts, batch]
        return [b - a for a, b in zip(edges, edges[1:])]
    if mode == "recursive":
        return _recursive_split(batch, generator)
    raise ValueError(f"unknown subgroup split {mode!r}")


def _recursive_split(size: int, generator: torch.Generator) -> list[int]:
    """Keep a group of n whole with probability 1 / (1 + log2 n), else cut it at a random point and recurse.

    That stop probability gives each sample about the same chance to train in a group of every octave of sizes (1,
    2-3, 4-7, .., up to the batch): inference batch sizes are spread over octaves too. A constant 1/2 left under 1% of
    the samples in single-sample groups, so batch-1 decisions went almost untrained (measured on the default run)."""
    if size == 1 or float(torch.rand((), generator=generator)) < 1.0 / (1.0 + math.log2(size)):
        return [size]
    cut = int(torch.randint(1, size, (1,), generator=generator))
    return _recursive_split(cut, generator) + _recursive_split(size - cut, generator)


def group_ids_for(sizes: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Assign each sample of a batch to a sub-group of the given sizes, in a random order."""
    ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(list(sizes)))
    return ids[torch.randperm(len(ids), generator=generator)]

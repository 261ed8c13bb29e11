"""timm layer subclasses injected through timm's own hooks (`block_fn`, `attn_layer`, `mlp_layer`).

They add no parameters and keep timm's own `forward`, so a pretrained timm state_dict loads unchanged and the
timm model still runs as itself. `forward_gated` takes the per-sample token validity and the gate values
explicitly, so nothing is stored between calls and export stays pure.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from pipeline.models import token_ops


class BlockGates(NamedTuple):
    """Gate values for one block; None = open. Scalars or [B] / [B, H] tensors (hard values, STE gradients)."""

    heads: Optional[torch.Tensor] = None  # [H] or [B, H]
    channels: Optional[torch.Tensor] = None  # [M]
    attn: Optional[torch.Tensor] = None  # [] or [B]
    mlp: Optional[torch.Tensor] = None  # [] or [B]


class Context(NamedTuple):
    """Dropped tokens kept as frozen keys and values (`gates.dropped_tokens: context`): never updated again, read by
    every later attention. Padded like the kept tokens: `valid` marks the real rows."""

    tokens: torch.Tensor  # [B, Kc, C]
    valid: torch.Tensor  # [B, Kc] bool
    sizes: Optional[torch.Tensor] = None  # [B, Kc] float after a merge stage: the input tokens each row stands for


class GatedAttention(Attention):
    """timm Attention that masks invalid keys, gates heads, and can return class-attention token scores."""

    def forward_gated(
        self,
        x: torch.Tensor,
        key_valid: Optional[torch.Tensor] = None,
        value_gate: Optional[torch.Tensor] = None,
        head_gate: Optional[torch.Tensor] = None,
        num_prefix: int = 1,
        want_scores: bool = False,
        context: Optional[Context] = None,
        score_valid: Optional[torch.Tensor] = None,
        shared_scores: bool = True,
        key_bias: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns the attention output and, if asked, the [B, N - P] token scores from the class row.

        `key_bias` [B, Nk] (context keys first, as `context`): added to every query's logit of each key. After a merge
        stage it is log(size), ToMe's proportional attention: a row standing for s tokens draws the attention its s
        members would.

        `shared_scores`: at inference, read the scores' class row off this attention (one pass) rather than a
        separate class-token pass (`gated_vit.Inference`).

        `context` (already normalised) adds keys and values before x's own (its size is static, so x's keys sit at
        the same positions at any batch composition); only x's tokens are scored, those of
        `score_valid` if given (training with context keeps every key and marks the active tokens there), else those
        of `key_valid`."""
        B, N, _ = x.shape
        attn_valid = key_valid
        if context is None:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = self._with_context(x, context.tokens)
            own = key_valid if key_valid is not None else torch.ones(B, N, dtype=torch.bool, device=x.device)
            attn_valid = torch.cat([context.valid, own], dim=1)
        q, k = self.q_norm(q), self.k_norm(k)
        if value_gate is not None:  # straight-through token mask: value 1 on kept tokens, gradient to thresholds
            v = v * value_gate[:, None, :, None]
        out, attn, head_out = self._attend(q, k, v, attn_valid, want_scores, shared_scores, key_bias)
        scores = None
        if want_scores:
            gate = None if head_gate is None else head_gate.detach()
            weights = token_ops.head_importance(head_out, gate)
            scores = token_ops.token_scores(attn[..., attn.shape[-1] - N:], weights, num_prefix,
                                            key_valid if score_valid is None else score_valid)
        if head_gate is not None and head_gate.dim() == 2:  # per-sample (group) gates cannot fold into weights
            out = out * head_gate[:, :, None, None]
            head_gate = None
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(_gated_linear(self.proj, out, head_gate, group=self.head_dim)), scores

    def _with_context(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q of x's tokens; k, v of the context rows then x's tokens, from one product over both (a context token has
        no query). Written as two products over qkv's Q and K/V rows, which partition its weight, so an export folds
        them into two initializers no larger than the one (`pipeline.export.fold_weights`)."""
        B, N, _ = x.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        dim = self.attn_dim
        q = F.linear(x, weight[:dim], None if bias is None else bias[:dim])
        kv = F.linear(torch.cat([context, x], dim=1), weight[dim:], None if bias is None else bias[dim:])
        q = q.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, kv.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor],
                want_scores: bool, shared_scores: bool = True, key_bias: Optional[torch.Tensor] = None,
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Attention output and, if scores are wanted, the class row and each head's class-token output, detached
        (the scores pass no gradient into q, k, v). Inference reads them off this attention in one pass
        (`token_ops.attention_with_class_row`) unless `shared_scores` is off; training keeps the fused kernel and a
        separate class-token pass."""
        bias = None if key_bias is None else key_bias[:, None, :]
        if not self.training and (want_scores and shared_scores or key_bias is not None):
            # With a key bias (after a merge stage) attention is written out too: SDPA's float-mask path would view
            # its data-dependent output in a way torch.export cannot prove (a stride of Max(1, K)).
            out, attn, head_out = token_ops.attention_with_class_row(q, k, v, self.scale, key_valid, bias)
            if not want_scores:
                return out, None, None
            if not shared_scores:  # the scores' separate class-token pass, as without a bias
                attn, head_out = token_ops.class_attention(q[:, :, 0], k, v, self.scale, key_valid, key_bias=bias)
            return out, attn.detach(), head_out.detach()
        out = token_ops.masked_attention(q, k, v, key_valid, self.attn_drop.p if self.training else 0.0, key_bias)
        if not want_scores:
            return out, None, None
        attn, head_out = token_ops.class_attention(q[:, :, 0].detach(), k.detach(), v.detach(), self.scale, key_valid,
                                                   key_bias=bias)
        return out, attn, head_out


class GatedMlp(Mlp):
    """timm Mlp whose hidden channels can be gated."""

    def forward_gated(self, x: torch.Tensor, channel_gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm(self.drop1(self.act(self.fc1(x))))
        return self.drop2(_gated_linear(self.fc2, h, channel_gate, group=1))


class GatedBlock(Block):
    """timm pre-norm Block whose sub-blocks can be gated or removed (set to None by slicing)."""

    def forward_gated(
        self,
        x: torch.Tensor,
        key_valid: Optional[torch.Tensor] = None,
        value_gate: Optional[torch.Tensor] = None,
        gates: BlockGates = BlockGates(),
        num_prefix: int = 1,
        want_scores: bool = False,
        context: Optional[Context] = None,
        update_gate: Optional[torch.Tensor] = None,
        score_valid: Optional[torch.Tensor] = None,
        shared_scores: bool = True,
        sizes: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """`context`: frozen tokens the attention also reads; `update_gate` ([B, N], training with context): how much
        of each branch a token takes (0 freezes it); `score_valid`, `shared_scores`: see
        `GatedAttention.forward_gated`; `sizes` [B, N]: after a merge stage, the input tokens each row of x stands for
        (the context's are in `context.sizes`), which the attention weighs its keys by."""
        scores = None
        if self.attn is not None and not self._skipped(gates.attn):
            normed = None if context is None else Context(self.norm1(context.tokens), context.valid)
            a, scores = self.attn.forward_gated(self.norm1(x), key_valid, value_gate, gates.heads, num_prefix,
                                                want_scores, normed, score_valid, shared_scores,
                                                size_bias(sizes, context))
            x = x + _per_token(self.drop_path1(_scale(self.ls1(a), gates.attn)), update_gate)
        if self.mlp is not None and not self._skipped(gates.mlp):
            branch = self.ls2(self.mlp.forward_gated(self.norm2(x), gates.channels))
            x = x + _per_token(self.drop_path2(_scale(branch, gates.mlp)), update_gate)
        return x, scores

    def _skipped(self, gate: Optional[torch.Tensor]) -> bool:
        """At inference a closed gate skips its sub-block's compute; in training it must run for the gradient."""
        return not self.training and gate is not None and bool((gate == 0).all())


def size_bias(sizes: Optional[torch.Tensor], context: Optional[Context]) -> Optional[torch.Tensor]:
    """log(size) of every key, context rows first (proportional attention); None before any merge stage."""
    if sizes is None:
        return None
    return sizes.log() if context is None else torch.cat([context.sizes, sizes], dim=1).log()


def _gated_linear(layer: nn.Linear, x: torch.Tensor, gate: Optional[torch.Tensor], group: int) -> torch.Tensor:
    """layer(x * gate), with the gate folded into the weight's input columns: a [C, M] product, not [B, N, M]."""
    if gate is None:
        return layer(x)
    return F.linear(x, layer.weight * gate.repeat_interleave(group)[None, :], layer.bias)


def _scale(branch: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    if gate is None:
        return branch
    return branch * (gate if gate.dim() == 0 else gate[:, None, None])


def _per_token(branch: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
    return branch if gate is None else branch * gate[..., None]


def remove_attention(block: GatedBlock) -> None:
    """Drop a block's attention sub-block entirely (all its heads were closed)."""
    block.norm1 = block.attn = block.ls1 = None  # type: ignore[assignment]


def remove_mlp(block: GatedBlock) -> None:
    """Drop a block's MLP sub-block entirely (all its channels were closed)."""
    block.norm2 = block.mlp = block.ls2 = None  # type: ignore[assignment]


def slice_heads(attn: GatedAttention, keep: torch.Tensor) -> None:
    """Keep only the heads in `keep` (sorted indices): rows of qkv, columns of proj."""
    d = attn.head_dim
    rows = (keep[:, None] * d + torch.arange(d)).reshape(-1)
    qkv_rows = torch.cat([rows + i * attn.attn_dim for i in range(3)])
    attn.qkv = _slice_linear(attn.qkv, out_idx=qkv_rows)
    attn.proj = _slice_linear(attn.proj, in_idx=rows)
    attn.num_heads = int(keep.numel())
    attn.attn_dim = attn.num_heads * d


def slice_channels(mlp: GatedMlp, keep: torch.Tensor) -> None:
    """Keep only the hidden channels in `keep`: rows of fc1, columns of fc2."""
    mlp.fc1 = _slice_linear(mlp.fc1, out_idx=keep)
    mlp.fc2 = _slice_linear(mlp.fc2, in_idx=keep)


def _slice_linear(layer: nn.Linear, out_idx: Optional[torch.Tensor] = None, in_idx: Optional[torch.Tensor] = None) -> nn.Linear:
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if out_idx is not None:
        weight = weight[out_idx]
        bias = None if bias is None else bias[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new

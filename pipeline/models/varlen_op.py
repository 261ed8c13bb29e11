"""`tokengate::varlen_attention`: attention of each sample over its own packed rows (the packed layout's attention).

The eager body is the reference, written like the ONNX expansion (`pipeline.export.varlen`): outputs padded to
[B * K, H * d], then the packed rows gathered with `flat`. The exporter writes the op as one placeholder node that
`pipeline.export.varlen.expand_varlen_attention` replaces with standard ops. Float32 only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


@torch.library.custom_op("tokengate::varlen_attention", mutates_args=())
def varlen_attention(q: torch.Tensor, kv: torch.Tensor, q_starts: torch.Tensor, q_lengths: torch.Tensor,
                     kv_starts: torch.Tensor, kv_lengths: torch.Tensor, flat: torch.Tensor,
                     scale: float, kv_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention of each sample's query rows over its own key/value rows.

    Args:
        q: [H, R, d] packed query rows of the batch (sample after sample), heads split off.
        kv: [2, H, Rk, d] packed key and value rows: the query rows' own, then (context mode) the sample's context.
        q_starts, q_lengths: [B] int64: sample b's queries are rows q_starts[b] .. q_starts[b] + q_lengths[b].
        kv_starts, kv_lengths: [B] int64: the same for its keys and values.
        flat: [R] int64, each query row's position b * K + j in the padded [B, K] view, K = max(q_lengths) (the
            packed layout's `flat`); a layout of another width would misplace rows here as in the ONNX Loop.
        kv_bias: [Rk] float or None, added to every query's logit of each key row (after a merge stage: log(size),
            proportional attention).
    Returns:
        [R, H * d]: each query row's attention output, heads concatenated.
    """
    width = int(q_lengths.max()) if q_lengths.numel() else 0
    padded = q.new_zeros(q_lengths.numel() * width, q.shape[0] * q.shape[2])
    for b in range(q_lengths.numel()):
        start, length = int(q_starts[b]), int(q_lengths[b])
        kv_start, kv_length = int(kv_starts[b]), int(kv_lengths[b])
        k, v = kv[:, :, kv_start:kv_start + kv_length].unbind(0)
        bias = None if kv_bias is None else kv_bias[kv_start:kv_start + kv_length]
        out = F.scaled_dot_product_attention(q[:, start:start + length], k, v, attn_mask=bias, scale=scale)  # [H, L, d]
        padded[b * width:b * width + length] = out.transpose(0, 1).reshape(length, -1)
    return padded[flat]


@varlen_attention.register_fake
def _varlen_attention_fake(q, kv, q_starts, q_lengths, kv_starts, kv_lengths, flat, scale, kv_bias=None):
    return q.new_empty(q.shape[1], q.shape[0] * q.shape[2])

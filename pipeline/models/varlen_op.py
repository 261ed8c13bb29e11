"""`tokengate::varlen_attention`: attention of each sample over its own packed rows (the packed layout's attention).

The eager body is the reference, written like the ONNX expansion (`pipeline.export.varlen`): outputs padded to
[B * K, H * d], then the packed rows gathered with `flat`. The exporter writes the op as one placeholder node that
`pipeline.export.varlen.expand_varlen_attention` replaces with standard ops. Float32 only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("tokengate::varlen_attention", mutates_args=())
def varlen_attention(qkv: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, flat: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """Attention of each sample over its own rows.

    Args:
        qkv: [3, H, R, d] packed rows of the batch (sample after sample), heads split off.
        starts, lengths: [B] int64: sample b owns rows starts[b] .. starts[b] + lengths[b].
        flat: [R] int64, each packed row's position b * K + j in the padded [B, K] view, K = max(lengths) (the
            packed layout's `flat`); a layout of another width would misplace rows here as in the ONNX Loop.
    Returns:
        [R, H * d]: each row's attention output, heads concatenated.
    """
    width = int(lengths.max()) if lengths.numel() else 0
    padded = qkv.new_zeros(lengths.numel() * width, qkv.shape[1] * qkv.shape[3])
    for b, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist())):
        q, k, v = qkv[:, :, start:start + length].unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [H, L, d]
        padded[b * width:b * width + length] = out.transpose(0, 1).reshape(length, -1)
    return padded[flat]


@varlen_attention.register_fake
def _varlen_attention_fake(qkv, starts, lengths, flat, scale):
    return qkv.new_empty(qkv.shape[2], qkv.shape[1] * qkv.shape[3])

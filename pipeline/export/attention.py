"""`scaled_dot_product_attention` written as five ONNX nodes, for every export (every flavor, the dense baseline and
the merging baseline alike).

torch's exporter otherwise decomposes it into about fourteen: the scale applied to q and k separately, and the
shape arithmetic (Shape, Slices, Concats, Reshapes) of its math path, in every block. On a small model ONNX Runtime
pays a fixed cost per node, so that is time without work. Its decomposition also fails outright for a float mask
after a reshape of qkv (torch 2.14: "Cannot view a tensor ... as a tensor with shape"), which the merge stage's
proportional attention and the merging baseline need.

Semantics are SDPA's at inference: softmax(q k^T * scale + mask) v, a boolean mask selecting the keys that count,
no dropout and no causal mask (neither occurs in an exported graph).
"""
from __future__ import annotations

import math

import torch
from onnxscript import ir
from onnxscript import opset18 as op


def sdpa_onnx(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale=None,
              enable_gqa: bool = False):
    """Translation of aten.scaled_dot_product_attention: [..., L, d] queries over [..., S, d] keys and values."""
    if is_causal or enable_gqa:
        raise NotImplementedError("exported attention is neither causal nor grouped")
    if scale is None:
        dim = query.shape[-1]
        if not isinstance(dim, int):
            raise NotImplementedError("the head dimension must be static to export attention")
        scale = 1.0 / math.sqrt(dim)
    rank = len(query.shape)
    perm = [*range(rank - 2), rank - 1, rank - 2]
    logits = op.MatMul(op.Mul(query, op.Constant(value_float=float(scale))), op.Transpose(key, perm=perm))
    if attn_mask is not None:
        if attn_mask.dtype == ir.DataType.BOOL:
            logits = op.Where(attn_mask, logits, op.Constant(value_float=float("-inf")))
        else:
            logits = op.Add(logits, attn_mask)
    return op.MatMul(op.Softmax(logits, axis=-1), value)


TRANSLATION = {torch.ops.aten.scaled_dot_product_attention.default: sdpa_onnx}

"""TokenSelect v1 in vectorised NumPy: the implementation ONNX Runtime calls for the plugin flavor.

Bit for bit the same as `pipeline.models.token_ops.token_select_reference`: rows are copied, never computed, and the
selection uses the same comparisons (strict `score > threshold`, min_keep top-up by descending rank with ties to the
lower index, NaN ranked as -inf). No Python loop over samples or tokens: a stable sort ranks the rows that need a
min_keep top-up, and one scatter compacts every sample's kept rows to its front.
"""
from __future__ import annotations

import numpy as np


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Per row, token indices from the highest score down; ties keep the lower index first; NaN sorts as -inf.

    Same order as `token_ops.descending_rank`: negating turns "descending" into NumPy's ascending stable sort
    (-0.0 and 0.0 compare equal there too, so they tie as in the reference).
    """
    key = -np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(key, axis=1, kind="stable")


def keep_mask(scores: np.ndarray, threshold: np.ndarray, min_keep: int) -> np.ndarray:
    """[B, M] bool: score > threshold, topped up to min_keep patches by rank (DESIGN.md §3)."""
    keep = scores > threshold
    count = min(int(min_keep), scores.shape[1])
    short = keep.sum(axis=1) < count  # only these rows need the ranking; usually none do
    if short.any():
        top = descending_order(scores[short])[:, :count]
        rows = np.flatnonzero(short)
        keep[rows[:, None], top] = True
    return keep


def token_select(x: np.ndarray, scores: np.ndarray, threshold: np.ndarray, num_prefix: int,
                 min_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """y [B, K, C] (prefix rows, kept patch rows in original order, zero rows) and lengths [B] int32.

    K = num_prefix + the largest kept count in the batch, so every sample's rows are independent of its batch.
    """
    num_prefix, batch = int(num_prefix), x.shape[0]
    threshold = np.asarray(threshold, dtype=scores.dtype).reshape(())
    keep = keep_mask(scores, threshold, min_keep)
    counts = keep.sum(axis=1)
    k_patch = int(counts.max()) if batch else 0
    y = np.zeros((batch, num_prefix + k_patch, x.shape[2]), dtype=x.dtype)
    y[:, :num_prefix] = x[:, :num_prefix]
    # Kept tokens in row-major order are each row's kept tokens in original order; scatter them to the front.
    rows, cols = np.nonzero(keep)
    slot = np.arange(rows.size) - (np.cumsum(counts) - counts)[rows]
    y[rows, num_prefix + slot] = x[rows, num_prefix + cols]
    return y, (counts + num_prefix).astype(np.int32)

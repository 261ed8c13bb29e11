"""Batch compositions for cross-batch validation.

Contiguous slices would put every sample next to the same neighbours at every batch size, and next to similar
images where a dataset is sorted by class; a bug that leaks between samples (padding, a shared K, a batch-wide
gate) can hide there. Each batch size therefore gets its own seeded shuffle, cut into consecutive batches; the
last batch is the remainder, so odd sizes occur too.
"""
from __future__ import annotations

import numpy as np


def compositions(count: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Positions 0..count-1 grouped into batches of `batch_size` (the last may be smaller), shuffled per size."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size} must be positive")
    order = np.random.default_rng([seed, batch_size]).permutation(count) if batch_size > 1 else np.arange(count)
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]

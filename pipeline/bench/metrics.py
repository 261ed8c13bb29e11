"""The numbers a bench reports, as pure functions of measured latencies and kept-token counts."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def padding_waste(kept: np.ndarray) -> float:
    """(max - mean) / max of the kept tokens in one batch at one stage: the share of padded rows.

    Args:
        kept: [B] tokens kept per sample (prefix included).
    """
    kept = np.asarray(kept, dtype=np.float64)
    top = kept.max() if kept.size else 0.0
    return float((top - kept.mean()) / top) if top > 0 else 0.0


def batch_padding_waste(kept: np.ndarray, batch: int) -> list[float]:
    """Mean padding waste per stage over consecutive batches of `batch` samples (a short last batch counts too).

    Args:
        kept: [N, S] tokens kept per sample and stage, in the order the samples are batched.
    Returns:
        one value per stage.
    """
    kept = np.asarray(kept)
    if kept.ndim != 2 or kept.shape[0] == 0:
        return []
    chunks = [kept[i:i + batch] for i in range(0, kept.shape[0], batch)]
    return [float(np.mean([padding_waste(c[:, s]) for c in chunks])) for s in range(kept.shape[1])]


def speedups(latency: Mapping[str, float], gflops: Mapping[str, float], dense_key: str,
             prefix: str) -> tuple[dict[str, float], dict[str, float]]:
    """speedup_vs_dense and speedup_efficiency for the models of one batch size.

    speedup = dense latency / model latency (the same batches, so equal to the throughput ratio);
    efficiency = speedup / (dense GFLOPs / model GFLOPs): 1.0 means the speed follows the FLOPs removed.

    Args:
        latency, gflops: per model name (`mean_latency`, mean GFLOPs of the same images); must hold `dense_key`.
        prefix: appended to each model name as "<model>@<prefix>" in the returned keys (the batch size).
    """
    speed, eff = {}, {}
    for model, seconds in latency.items():
        ratio = latency[dense_key] / seconds
        speed[f"{model}@{prefix}"] = ratio
        eff[f"{model}@{prefix}"] = ratio / (gflops[dense_key] / gflops[model])
    return speed, eff


def mean_latency(seconds: np.ndarray) -> float:
    """Seconds per batch over a set of batches timed in several rounds ([rounds, batches]): each batch's median
    over the rounds (a stall of a noisy machine in one round is voted out), then the mean over the batches (an
    input-adaptive model's time per image set is the sum of its batches, so its throughput follows the mean batch,
    as its GFLOPs per image do, not the median one)."""
    seconds = np.asarray(seconds, dtype=np.float64)
    return float(np.median(seconds, axis=0).mean())


def share(part: float, whole: float) -> float:
    """part / whole, 0 for an empty whole."""
    return float(part / whole) if whole > 0 else 0.0

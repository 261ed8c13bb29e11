"""Warm-up, then timed rounds; in every round each batch size runs every model on the same batches, in an order
that rotates from round to round, so that load drifts on a shared machine hit all models alike."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from pipeline.bench.metrics import padding_waste
from pipeline.bench.sessions import Call
from pipeline.progress import progress


@dataclass
class Timings:
    """Seconds per timed run, and the padding waste per stage of every timed batch, keyed by (model, batch)."""

    latencies: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    round_medians: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    waste: dict[tuple[str, int], list[list[float]]] = field(default_factory=dict)
    reps: dict[int, int] = field(default_factory=dict)  # timed runs per model per round, per batch size


def batch_at(pool: np.ndarray, batch: int, index: int) -> np.ndarray:
    """The index-th batch of `batch` consecutive pool images, wrapping around the pool."""
    start = (index * batch) % len(pool)
    return np.ascontiguousarray(np.take(pool, range(start, start + batch), axis=0, mode="wrap"))


def time_once(call: Call, images: np.ndarray) -> tuple[float, np.ndarray | None]:
    start = time.perf_counter()
    _, kept = call(images)
    return time.perf_counter() - start, kept


def warm_up(calls: Mapping[str, Call], pool: np.ndarray, batch: int, seconds: float) -> dict[str, float]:
    """Run each model at least twice and for `seconds`; returns each model's last warm latency."""
    last = {}
    for name, call in calls.items():
        spent, runs = 0.0, 0
        while runs < 2 or spent < seconds:
            took, _ = time_once(call, batch_at(pool, batch, runs))
            spent, runs, last[name] = spent + took, runs + 1, took
    return last


def run_rounds(calls: Mapping[str, Call], pool: np.ndarray, batch_sizes: Sequence[int], rounds: int,
               warmup_s: float = 1.0, min_round_s: float = 0.3, max_reps: int = 20, show: bool = True) -> Timings:
    """Time every model at every batch size, interleaved.

    Args:
        calls: model name -> callable; the first is the reference whose warm latency sets the repetitions.
        pool: float32 [N, C, H, W] images; batches are consecutive slices of it (wrapping).
        min_round_s: each model runs ceil(min_round_s / reference latency) batches per round (at most max_reps).
    """
    out = Timings()
    names = list(calls)
    for batch in batch_sizes:
        warm = warm_up(calls, pool, batch, warmup_s)
        out.reps[batch] = max(1, min(max_reps, math.ceil(min_round_s / max(warm[names[0]], 1e-6))))
    bar = progress(total=rounds * len(batch_sizes), desc="timed rounds", disable=not show, leave=False)
    for r in range(rounds):
        for batch in batch_sizes:
            reps = out.reps[batch]
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                times = []
                for j in range(reps):
                    took, kept = time_once(calls[name], batch_at(pool, batch, r * reps + j))
                    times.append(took)
                    if kept is not None and kept.size:
                        out.waste.setdefault((name, batch), []).append(
                            [padding_waste(kept[:, s]) for s in range(kept.shape[1])])
                out.latencies.setdefault((name, batch), []).extend(times)
                out.round_medians.setdefault((name, batch), []).append(float(np.median(times)))
            bar.update(1)
    bar.close()
    return out

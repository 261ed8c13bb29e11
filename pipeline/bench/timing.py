"""Warm-up, then timed rounds. Every round times every model on the same batches: the image pool cut into
consecutive batches, in an order of models that rotates from batch to batch and round to round, so that load
drifts on a shared machine hit all models alike and each model's round covers the same images. With
`turns="pool"` each model runs the round's batches back to back instead, the first model rotating by round.

The same images every round matter for input-adaptive models: a token-gated model takes longer on some images than
on others, so a round of other images would mix content into what should be noise, and its median batch is not
its mean one (DeiT-S combined on the bench photos: median image 2.05 GMACs, mean 2.18)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from pipeline.bench.metrics import padding_waste
from pipeline.bench.options import TURNS, BenchOptions
from pipeline.runners.base import Runner
from pipeline.progress import progress


@dataclass
class Timings:
    """Seconds per timed call, [rounds, batches] per (model, batch size): column i holds the same images in every
    round and for every model. Padding waste per stage of each timed batch (first round), per (model, batch)."""

    seconds: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    waste: dict[tuple[str, int], list[list[float]]] = field(default_factory=dict)
    batches: dict[int, int] = field(default_factory=dict)  # timed batches per round, per batch size


def batches_per_round(pool_size: int, batch: int) -> int:
    """Consecutive batches that cover the pool (one, wrapping around, when the pool is smaller than a batch)."""
    return max(1, pool_size // batch)


def timed_images(pool_size: int, batch: int) -> np.ndarray:
    """Pool index of every image a round times at `batch`, in order (GFLOPs per image are averaged over these)."""
    count = batches_per_round(pool_size, batch) * batch
    return np.arange(count) % pool_size


def mean_over_timed(per_image: np.ndarray, batch: int) -> float:
    """The mean of a per-image value (MACs) over the images a round times at `batch`."""
    per_image = np.asarray(per_image, dtype=np.float64)
    return float(per_image[timed_images(len(per_image), batch)].mean())


def batch_at(pool: np.ndarray, batch: int, index: int) -> np.ndarray:
    """The index-th batch of `batch` consecutive pool images, wrapping around the pool."""
    start = (index * batch) % len(pool)
    return np.ascontiguousarray(np.take(pool, range(start, start + batch), axis=0, mode="wrap"))


def time_once(runner: Runner, images: np.ndarray) -> tuple[float, np.ndarray | None]:
    start = time.perf_counter()
    kept = runner.infer(images).kept_tokens
    return time.perf_counter() - start, kept


def warm_up(calls: Mapping[str, Runner], pool: np.ndarray, batch: int, seconds: float) -> None:
    """Run each model at least twice and for `seconds`."""
    for call in calls.values():
        spent, runs = 0.0, 0
        while runs < 2 or spent < seconds:
            took, _ = time_once(call, batch_at(pool, batch, runs))
            spent, runs = spent + took, runs + 1


def run_rounds(calls: Mapping[str, Runner | Sequence[Runner]], pool: np.ndarray, batch_sizes: Sequence[int],
               rounds: int, warmup_s: float = 1.0, show: bool = True, turns: str = BenchOptions.turns) -> Timings:
    """Time every model at every batch size, interleaved.

    Args:
        calls: row name -> runner, or several sessions of one file that take turns round by round (round r runs
            session r mod K), so that the rounds' spread includes what the session itself moves (docs/bench.md).
        pool: float32 [N, C, H, W] images; each round runs every model on all of `batches_per_round` batches.
        turns: "batch": the models take turns batch by batch, the first rotating by batch and round (a machine
            that slows down slows them alike); "pool": each model runs the round's batches back to back, the first
            rotating by round, as a deployed session runs (its weights and buffers stay in the caches between
            calls; docs/bench.md measures what that moves).
    """
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {TURNS}, not {turns!r}")
    sessions = {name: list(call) if isinstance(call, (list, tuple)) else [call] for name, call in calls.items()}
    names = list(sessions)
    out = Timings(batches={b: batches_per_round(len(pool), b) for b in batch_sizes})
    for batch in batch_sizes:
        for k in range(max(map(len, sessions.values()))):
            warm_up({name: own[k] for name, own in sessions.items() if k < len(own)}, pool, batch, warmup_s)
        for name in names:
            out.seconds[(name, batch)] = np.zeros((rounds, out.batches[batch]))
    bar = progress(total=rounds * sum(out.batches.values()) * len(names), desc="timed calls", disable=not show,
                   leave=False)
    for r in range(rounds):
        for batch in batch_sizes:
            inputs: dict[int, np.ndarray] = {}  # each batch cut from the pool once per round, whatever the turns
            for name, i in _turns(names, out.batches[batch], r, turns):
                if i not in inputs:
                    inputs[i] = batch_at(pool, batch, i)
                took, kept = time_once(sessions[name][r % len(sessions[name])], inputs[i])
                out.seconds[(name, batch)][r, i] = took
                if r == 0 and kept is not None and kept.size:
                    out.waste.setdefault((name, batch), []).append(
                        [padding_waste(kept[:, s]) for s in range(kept.shape[1])])
                bar.update(1)
    bar.close()
    return out


def _turns(names: Sequence[str], batches: int, round_index: int, turns: str) -> Iterator[tuple[str, int]]:
    """(model, batch index) in the order round `round_index` times them (`run_rounds`' `turns`)."""
    if turns == "pool":
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for i in range(batches):
                yield name, i
        return
    for i in range(batches):
        shift = (round_index + i) % len(names)
        for name in names[shift:] + names[:shift]:
            yield name, i

"""The timing plan: every round times every model on the same batches (the pool), model order rotating; the
round speedups are ratios of whole rounds. Fake models record what they saw, so nothing here depends on speed."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench.report import round_speedups, rows_and_speedups
from pipeline.bench.timing import Timings, batch_at, batches_per_round, mean_over_timed, run_rounds, timed_images
from pipeline.runners.base import RunnerOutput


class Recorder:
    """A runner that logs (call order, name, first pixel of each image) and returns 2 stages' kept counts."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def infer(self, images: np.ndarray) -> RunnerOutput:
        self.log.append((self.name, tuple(images[:, 0, 0, 0].astype(int))))
        kept = np.stack([np.arange(len(images)) + 5, np.full(len(images), 3)], axis=1)
        return RunnerOutput(np.zeros((len(images), 2)), kept)


def test_every_round_times_the_same_batches_for_every_model():
    pool = np.arange(7, dtype=np.float32)[:, None, None, None] * np.ones((7, 1, 2, 2), np.float32)
    log: list = []
    calls = {name: Recorder(name, log) for name in ("dense", "tokens", "combined")}
    timings = run_rounds(calls, pool, [1, 3], rounds=2, warmup_s=0.0, show=False)
    log = log[12:]  # warm-up: each model twice per batch size
    assert timings.batches == {1: 7, 3: 2}  # 7 images: 7 batches of 1, 2 of 3 (the 7th image is not timed at 3)
    assert timings.seconds[("tokens", 3)].shape == (2, 2) and (timings.seconds[("tokens", 3)] > 0).all()
    per_round = 3 * (7 + 2)
    assert len(log) == 2 * per_round
    first, second = log[:per_round], log[per_round:]
    for calls_of_round in (first, second):
        seen = {name: [images for n, images in calls_of_round if n == name] for name in ("dense", "tokens", "combined")}
        expected = [(i,) for i in range(7)] + [(0, 1, 2), (3, 4, 5)]
        assert seen["dense"] == seen["tokens"] == seen["combined"] == expected
    # the model that goes first rotates from batch to batch and round to round
    leaders = [log[i][0] for i in range(0, len(log), 3)]
    assert leaders[:4] == ["dense", "tokens", "combined", "dense"]
    assert leaders[9] == "tokens"  # round 1, batch 0 starts one model later than round 0 did
    # padding waste of each timed batch (first round only): stage 0 of [5, 6, 7] -> (7 - 6) / 7
    assert timings.waste[("tokens", 3)][0] == pytest.approx([1 / 7, 0.0], abs=1e-12)
    assert len(timings.waste[("tokens", 1)]) == 7


def test_timed_images_cover_the_pool_in_batch_order():
    assert batches_per_round(10, 4) == 2 and list(timed_images(10, 4)) == list(range(8))
    assert batches_per_round(3, 8) == 1 and list(timed_images(3, 8)) == [0, 1, 2, 0, 1, 2, 0, 1]  # wraps
    pool = np.arange(3, dtype=np.float32)[:, None, None, None]
    assert list(batch_at(pool, 8, 0)[:, 0, 0, 0]) == [0, 1, 2, 0, 1, 2, 0, 1]  # what batch_at runs, image by image
    macs = np.arange(1.0, 14.0)  # 13 images costing 1..13
    assert mean_over_timed(macs, 1) == pytest.approx(7.0, abs=1e-12)
    assert mean_over_timed(macs, 3) == pytest.approx(6.5, abs=1e-12)  # images 1..12: the 13th is not timed at 3
    assert mean_over_timed(macs[:3], 8) == pytest.approx((3 * 1 + 3 * 2 + 2 * 3) / 8, abs=1e-12)


def test_a_pool_smaller_than_the_batch_is_timed_wrapping():
    pool = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 1, 2, 2), np.float32)
    log: list = []
    timings = run_rounds({"dense": Recorder("dense", log)}, pool, [4], rounds=2, warmup_s=0.0, show=False)
    assert timings.batches == {4: 1} and timings.seconds[("dense", 4)].shape == (2, 1)
    assert log[2:] == [("dense", (0, 1, 2, 0))] * 2  # after 2 warm-up calls, one wrapped batch per round


def test_rows_follow_the_mean_batch_and_rounds_compare_whole_rounds():
    timings = Timings(batches={2: 2})
    timings.seconds[("dense", 2)] = np.array([[0.10, 0.10], [0.12, 0.10], [0.10, 0.10]])
    timings.seconds[("tokens", 2)] = np.array([[0.02, 0.06], [0.02, 0.06], [0.05, 0.07]])
    gflops = {("dense", 2): 4.0, ("tokens", 2): 2.0}
    rows, speed, eff = rows_and_speedups(timings, ["dense", "tokens"], [2], gflops, {})
    tokens = next(r for r in rows if r["model"] == "tokens")
    # medians over rounds: dense 0.10, 0.10; tokens 0.02, 0.06 -> mean 0.04 s a batch of 2 -> 50 img/s
    assert tokens["latency_ms_mean"] == pytest.approx(40.0, abs=1e-9)
    assert tokens["throughput_img_s"] == pytest.approx(50.0, abs=1e-9)
    assert tokens["latency_ms_p50"] == pytest.approx(1000 * float(np.median([.02, .06, .02, .06, .05, .07])), abs=1e-9)
    assert speed["tokens@2"] == pytest.approx(0.10 / 0.04, abs=1e-12)
    assert eff["tokens@2"] == pytest.approx(2.5 / 2.0, abs=1e-12)
    # per round: (0.2 / 0.08, 0.22 / 0.08, 0.2 / 0.12) -> min, median, max
    assert round_speedups(timings, ["dense", "tokens"], [2])["tokens@2"] == pytest.approx([0.2 / 0.12, 2.5, 2.75])


def test_sessions_of_a_file_take_turns_round_by_round():
    """Several sessions of one file: each is warmed up, and round r runs session r mod K on every batch, so each
    round's figure comes from one session and the rounds sample the sessions in turn."""
    pool = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((4, 1, 2, 2), np.float32)
    log: list = []
    calls = {"dense": Recorder("dense", log), "packed": [Recorder(f"packed#{k}", log) for k in range(2)]}
    timings = run_rounds(calls, pool, [2], rounds=3, warmup_s=0.0, show=False)
    warm, timed = log[:6], log[6:]  # dense, packed#0, then packed#1: twice each
    assert [n for n, _ in warm] == ["dense", "dense", "packed#0", "packed#0", "packed#1", "packed#1"]
    per_round = 2 * 2  # two models, two batches of 2
    used = [sorted({n for n, _ in timed[r * per_round:(r + 1) * per_round] if n != "dense"}) for r in range(3)]
    assert used == [["packed#0"], ["packed#1"], ["packed#0"]]
    assert timings.seconds[("packed", 2)].shape == (3, 2) and ("packed#0", 2) not in timings.seconds


def test_pool_turns_run_each_model_back_to_back_and_rotate_by_round():
    """turns="pool": each model times the round's batches in a row, as a deployed session runs; the model that goes
    first rotates from round to round, and every model still sees the same batches every round."""
    pool = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 1, 2, 2), np.float32)
    log: list = []
    calls = {name: Recorder(name, log) for name in ("dense", "packed", "native")}
    timings = run_rounds(calls, pool, [2], rounds=3, warmup_s=0.0, show=False, turns="pool")
    timed = log[6:]  # warm-up: each model twice
    batches = [(0, 1), (2, 3)]
    per_round = 3 * len(batches)
    for r, first in enumerate(["dense", "packed", "native"]):
        calls_of_round = timed[r * per_round:(r + 1) * per_round]
        names = [n for n, _ in calls_of_round]
        order = ["dense", "packed", "native"]
        order = order[order.index(first):] + order[:order.index(first)]
        assert names == [n for n in order for _ in batches]  # whole pool per model, then the next model
        assert [images for _, images in calls_of_round] == batches * 3
    assert timings.seconds[("packed", 2)].shape == (3, 2) and (timings.seconds[("packed", 2)] > 0).all()
    with pytest.raises(ValueError, match="turns"):
        run_rounds(calls, pool, [2], rounds=1, warmup_s=0.0, show=False, turns="round")

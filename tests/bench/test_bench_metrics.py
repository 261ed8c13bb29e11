"""Padding waste, speedups and efficiency on numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench.metrics import batch_padding_waste, mean_latency, padding_waste, percentile, share, speedups


def test_padding_waste_is_max_minus_mean_over_max():
    assert padding_waste(np.array([10, 5, 5, 10])) == pytest.approx(0.25, abs=1e-12)  # (10 - 7.5) / 10
    assert padding_waste(np.array([7, 7, 7])) == 0.0  # no padding when every sample keeps as many
    assert padding_waste(np.array([8])) == 0.0  # batch 1 never pads


def test_batch_padding_waste_averages_batches_per_stage():
    kept = np.array([[10, 4], [5, 4], [6, 2], [6, 2], [3, 1]])  # 5 samples, 2 stages; batches of 2 -> 3 batches
    # stage 0: [10, 5] -> 0.25, [6, 6] -> 0, [3] -> 0; stage 1: [4, 4] -> 0, [2, 2] -> 0, [1] -> 0
    assert batch_padding_waste(kept, 2) == pytest.approx([0.25 / 3, 0.0], abs=1e-12)
    assert batch_padding_waste(kept, 5)[1] == pytest.approx((4 - 13 / 5) / 4, abs=1e-12)


def test_speedup_and_efficiency_arithmetic():
    latency = {"dense": 0.100, "tokens": 0.050, "combined": 0.040}
    gflops = {"dense": 4.0, "tokens": 2.5, "combined": 2.0}
    speed, eff = speedups(latency, gflops, "dense", "16")
    assert speed == pytest.approx({"dense@16": 1.0, "tokens@16": 2.0, "combined@16": 2.5}, abs=1e-12)
    # efficiency = speedup / (dense GFLOPs / model GFLOPs): tokens 2.0 / 1.6, combined 2.5 / 2.0
    assert eff == pytest.approx({"dense@16": 1.0, "tokens@16": 1.25, "combined@16": 1.25}, abs=1e-12)


def test_percentile_and_share():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0, abs=1e-12)
    assert np.isnan(percentile([], 50))
    assert share(3.0, 12.0) == 0.25 and share(1.0, 0.0) == 0.0


def test_mean_latency_is_the_mean_over_batches_of_the_median_over_rounds():
    seconds = np.array([[1.0, 4.0, 2.0],
                        [1.2, 4.4, 9.0],  # a stall in round 1, batch 2: outvoted by the other two rounds
                        [0.8, 4.2, 2.2]])
    # medians per batch: 1.0, 4.2, 2.2 -> mean 2.4667; the median batch (2.2) would understate a model whose
    # cost depends on the images
    assert mean_latency(seconds) == pytest.approx((1.0 + 4.2 + 2.2) / 3, abs=1e-12)

"""The fixed-keep-rate top-k baseline: its cost matches the target, every image keeps exactly k_s patches, and the
search measures every split that matches the cost (checked against a brute-force enumeration written here)."""
import copy
import itertools

import pytest
import torch

from calib.baseline import FixedRateSearch, counts_for, fixed_model
from calib.cost import cost_ratio, reference_macs
from calib.inputs import model_inputs
from pipeline.data import load_dataset
from pipeline.models import load_student, load_teacher


@pytest.fixture(scope="module")
def setup(small_run, calib_set):
    cfg, run = small_run
    teacher, student = load_teacher(run, cfg), load_student(run, cfg)
    data = load_dataset(cfg.data, cfg.model)
    images = model_inputs(calib_set, 1, 28, data.mean, data.std)
    with torch.no_grad():
        dense = teacher.forward_dropped(images)[0]
    return student, images, dense, reference_macs(teacher)


def test_counts_follow_the_profile():
    assert counts_for((1.0, 0.0), 0.5, 16) == (8, 8)  # all pruning at the first stage
    assert counts_for((0.5, 0.5), 0.25, 16) == (8, 4)  # the same rate 0.5 at both stages
    assert counts_for((0.5, 0.5), 0.0, 16) == (1, 1)  # never below one patch
    assert counts_for((0.5, 0.5), 1.0, 16) == (16, 16)


@pytest.mark.parametrize("mode", ["discard", "context"])
@pytest.mark.parametrize("target", [0.7, 0.8])
def test_baseline_matches_the_cost_and_keeps_exactly_k(setup, target, mode):
    student, images, dense, reference = setup
    student = copy.deepcopy(student)
    student.dropped_tokens = mode  # context: the same counts cost more (their keys and values), so fewer are kept
    search = FixedRateSearch(student, images, dense, reference)
    result = search.search(target, progress=False)
    best = result.best
    assert search.tolerance() < 0.01, "16 patches: half a last-stage token is under 1% of dense"
    assert abs(best.ratio - target) <= search.tolerance(), best
    assert best.kl == min(t.kl for t in result.trials)
    model = fixed_model(student, best.counts)
    with torch.no_grad():
        lengths = model.forward_dropped(images)[1]
    expected = torch.tensor([student.num_prefix + k for k in best.counts], dtype=lengths.dtype)
    assert torch.equal(lengths, expected.expand_as(lengths)), "every image keeps exactly P + k_s tokens"
    assert cost_ratio(model, lengths, reference) == pytest.approx(best.ratio, abs=1e-9)
    assert student.inference.select == "op", "the baseline works on a view; the calibrated model is untouched"
    if result.uniform is not None:
        rates = result.uniform.rates
        assert max(rates) - min(rates) <= 0.2, "EViT's schedule: about one rate at every stage"


@pytest.mark.parametrize("target", [0.7, 0.8])
def test_search_measures_every_split_that_matches_the_cost(setup, target):
    student, images, dense, reference = setup
    search = FixedRateSearch(student, images, dense, reference)
    tolerance = search.tolerance()
    patches, prefix = student.geometry().num_patches, student.num_prefix
    expected = set()
    for first, second in itertools.product(range(1, patches + 1), repeat=2):
        if second <= first:
            lengths = torch.tensor([[prefix + first, prefix + second]], dtype=torch.float64)
            if abs(cost_ratio(student, lengths, reference) - target) <= tolerance:
                expected.add((first, second))
    assert len(expected) >= 3, "the test needs a choice of splits"
    result = search.search(target, max_trials=len(expected), progress=False)
    assert result.candidates == len(expected)
    assert {t.counts for t in result.trials} == expected
    assert result.best.kl == min(t.kl for t in result.trials)


def test_search_caps_the_trials_at_the_closest_in_cost(setup):
    student, images, dense, reference = setup
    search = FixedRateSearch(student, images, dense, reference)
    everything = search.search(0.7, progress=False)
    capped = search.search(0.7, max_trials=2, progress=False)
    assert everything.candidates == capped.candidates > 2
    misses = sorted(abs(t.ratio - 0.7) for t in everything.trials)
    assert sorted(abs(t.ratio - 0.7) for t in capped.trials) == pytest.approx(misses[:2], abs=1e-12)

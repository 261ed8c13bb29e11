"""pipeline.runners.compare: Polygraphy's comparison with our semantics, max |got - reference| <= atol."""
import math

import numpy as np
import pytest

from pipeline.runners.compare import compare_outputs, logit_gap

TOL = 1e-4  # validate.tol_vs_torch's default; any positive tolerance would do


@pytest.fixture
def logits():
    return np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)


def test_the_gap_is_the_max_absolute_difference(logits):
    other = logits + np.random.default_rng(1).uniform(-3e-5, 3e-5, logits.shape).astype(np.float32)
    expected = float(np.abs(logits.astype(np.float64) - other).max())
    assert logit_gap(logits, other, TOL).max_abs == pytest.approx(expected, rel=1e-6)  # float32 vs float64 diff


def test_the_tolerance_is_inclusive_and_relative_error_never_rescues(logits):
    other = logits.copy()
    other[3, 4] = logits[3, 4] + np.float32(2e-4)
    gap = logit_gap(logits, other, TOL)
    assert not gap.passed and gap.max_abs > TOL
    assert logit_gap(logits, other, gap.max_abs).passed  # max <= atol passes
    big = logits * 1e6  # relative error 1e-10, absolute 1.0: still a failure with rtol 0
    assert not logit_gap(big, big + 1.0, TOL).passed


def test_nan_or_inf_on_either_side_fails_and_reads_as_inf(logits):
    bad = logits.copy()
    bad[0, 0] = np.nan
    for a, b in ((bad, logits), (logits, bad)):
        gap = logit_gap(a, b, 1e9)
        assert not gap.passed and gap.max_abs == math.inf
    inf = logits.copy()
    inf[1, 1] = np.inf
    assert not logit_gap(inf, inf, 1e9).passed  # inf - inf is no agreement


def test_only_the_named_outputs_are_compared(logits):
    kept = np.full((64, 2), 9, np.int32)
    got, ref = {"logits": logits, "kept_tokens": kept}, {"logits": logits, "kept_tokens": kept + 1}
    assert compare_outputs(got, ref, {"logits": TOL}).passed
    gap = compare_outputs(got, ref, {"logits": TOL, "kept_tokens": 0})
    assert not gap.passed and gap.max_abs == 1.0


def test_an_empty_selection_agrees():
    empty = np.zeros((0, 10), np.float32)
    assert logit_gap(empty, empty, TOL).passed


def test_a_named_output_missing_on_either_side_fails(logits):
    kept = np.full((64, 2), 9, np.int32)
    full, bare = {"logits": logits, "kept_tokens": kept}, {"logits": logits}
    for got, ref in ((full, bare), (bare, full)):
        gap = compare_outputs(got, ref, {"logits": TOL, "kept_tokens": 0})
        assert not gap.passed and gap.max_abs == math.inf


def test_outputs_of_different_shapes_fail(logits):
    gap = logit_gap(logits, logits[:32], 1e9)
    assert not gap.passed and gap.max_abs == math.inf

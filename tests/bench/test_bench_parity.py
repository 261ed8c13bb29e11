"""The bench's parity check: validate's tolerance on the images that keep PyTorch's tokens, and only a few images
(a score within rounding of a threshold) allowed to keep others."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.bench import run as bench_run
from pipeline.config import Config
from pipeline.errors import TokenGateError
from pipeline.runners.base import RunnerOutput

IMAGES = 40


class Fixed:
    """A runner that answers from fixed arrays, by the first pixel of each image (its index)."""

    def __init__(self, logits: np.ndarray, kept: np.ndarray):
        self.logits, self.kept = logits, kept

    def infer(self, images: np.ndarray) -> RunnerOutput:
        index = images[:, 0, 0, 0].astype(int)
        return RunnerOutput(self.logits[index], self.kept[index])


@pytest.fixture
def reference(monkeypatch):
    logits = np.random.default_rng(0).normal(size=(IMAGES, 3)).astype(np.float32)
    kept = np.full((IMAGES, 2), 5, np.int32)
    monkeypatch.setattr("pipeline.validate.subject.describe",
                        lambda path: type("S", (), {"reference_model": "student", "caps": None})())
    monkeypatch.setattr("pipeline.validate.compare.reference_runner", lambda subject: Fixed(logits, kept))
    return logits, kept


def _check(logits, kept):
    pool = np.arange(IMAGES, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    return bench_run.check_and_count({"packed": "model.packed.onnx"}, {"packed": Fixed(logits, kept)}, pool,
                                     Config(), batch=8, strict=True, show=False)


def test_a_tie_at_a_threshold_is_counted_not_fatal(reference):
    logits, kept = reference[0].copy(), reference[1].copy()
    kept[7, 1] += 1  # one image keeps one more token at stage 2: its logits move by far more than the tolerance
    logits[7] += 0.5
    logits[3] += 5e-5  # the others agree within validate.tol_vs_torch (1e-4)
    counts, parity = _check(logits, kept)
    assert parity["packed"]["images_keeping_other_tokens"] == 1
    assert parity["packed"]["max_abs_diff_vs_torch"] == pytest.approx(5e-5, rel=1e-3)
    assert counts["packed"].shape == (IMAGES, 2)


def test_too_many_ties_or_a_gap_elsewhere_fail(reference):
    logits, kept = reference[0].copy(), reference[1].copy()
    kept[:3, 0] -= 1  # 3 of 40 = 7.5% > MAX_TIE_SHARE
    with pytest.raises(TokenGateError, match="3 of 40 images keep other tokens"):
        _check(logits, kept)
    logits[9] += 2e-4  # an image that keeps the same tokens but differs beyond 1e-4
    with pytest.raises(TokenGateError, match="differs from its PyTorch reference"):
        _check(logits, reference[1])

"""Training-free threshold calibration: per-stage thresholds whose mean GFLOPs on the calibration set meet a budget,
with the split of pruning across stages that keeps the outputs closest (KL) to the dense model.

Parametrisation. A split is a profile w on the simplex (w_s >= 0, sum 1) and one knob t in [0, 1]: stage s keeps the
share t ** w_s of the patch tokens still valid before it, pooled over all calibration images. That share is turned
into a threshold by taking the quantile of the pooled relative scores (the midpoint between the last kept and the
first dropped score, so tiny numeric differences cannot flip a token). Because the quantile is pooled, images whose
attention is concentrated keep fewer tokens than images whose attention is spread: that is what makes thresholds
adaptive where a fixed rate is not.

Search. Cost grows with t, so for each profile a bisection on t finds the largest t whose mean cost is within the
budget. Profiles come from a coarse simplex grid (every split, from "all at the first stage" to "spread evenly"),
then a grid twice as fine around the best one. The winner minimises KL(dense || calibrated) on the calibration set:
a label-free proxy for accuracy that uses every logit, not only the argmax. No gradient step anywhere.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.models import GatedViT

from calib.cost import check_budget, check_reachable, cost_ratio, floor_ratio
from pipeline.models.staged import StagedForward, StagedOutput, quantile_threshold

BISECTION_STEPS = 18
COST_TOLERANCE = 0.002  # stop bisecting once the cost is this close (as a fraction of dense) under the budget


@dataclass(frozen=True)
class Trial:
    """One evaluated setting on the calibration set."""

    profile: tuple[float, ...]
    knob: float
    thresholds: tuple[float, ...]
    ratio: float  # mean GFLOPs / dense GFLOPs
    kl: float  # KL(dense || model), mean per image
    agreement: float  # share of images whose top-1 equals the dense model's
    mean_kept: tuple[float, ...]  # tokens (prefix included) after each stage


@dataclass
class SearchResult:
    budget: float
    floor: float
    best: Trial
    trials: list[Trial] = field(default_factory=list)  # the best trial of every profile
    forwards: int = 0

    def to_dict(self) -> dict:
        return {"budget": self.budget, "floor": self.floor, "best": asdict(self.best), "forwards": self.forwards,
                "profiles": [asdict(t) for t in self.trials]}


def kl_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> float:
    """KL(p_dense || p_model) per image, in nats."""
    return float(F.kl_div(F.log_softmax(logits.double(), -1), F.log_softmax(dense_logits.double(), -1),
                          log_target=True, reduction="batchmean"))


def fidelity_to_dense(logits: torch.Tensor, dense_logits: torch.Tensor) -> tuple[float, float]:
    """KL(dense || model) per image, and the share of images whose top-1 matches dense's: what every calibration
    search (thresholds, fixed rates, merging) ranks and reports its candidates by."""
    agreement = float((logits.argmax(-1) == dense_logits.argmax(-1)).double().mean())
    return kl_to_dense(logits, dense_logits), agreement


def simplex_grid(stages: int, steps: int) -> list[tuple[float, ...]]:
    """Every profile whose entries are multiples of 1/steps and sum to 1."""
    if stages == 1:
        return [(1.0,)]
    points = []
    for cuts in itertools.combinations(range(steps + stages - 1), stages - 1):
        parts, last = [], -1
        for c in (*cuts, steps + stages - 1):
            parts.append(c - last - 1)
            last = c
        points.append(tuple(p / steps for p in parts))
    return points


def neighbours(profile: tuple[float, ...], steps: int) -> list[tuple[float, ...]]:
    """Profiles on the grid of `steps` within one step of `profile` in every coordinate (itself excluded)."""
    close = [p for p in simplex_grid(len(profile), steps)
             if max(abs(a - b) for a, b in zip(p, profile)) <= 1.0 / steps + 1e-9]
    return [p for p in close if max(abs(a - b) for a, b in zip(p, profile)) > 1e-9]


class DenseReference:
    """What every calibration search holds its trials against: the staged forward over the calibration images, the
    dense model's logits on them, and the dense MACs its cost ratios divide by. The threshold search and the
    fixed-rate baseline share it, so both rank their candidates by the same criterion."""

    def __init__(self, model: GatedViT, images: torch.Tensor, dense_logits: torch.Tensor, reference_macs: float,
                 batch_size: int = 256):
        self.model = model
        self.forward = StagedForward(model, images, batch_size)
        self.dense_logits = dense_logits
        self.reference = reference_macs

    def fidelity(self, logits: torch.Tensor) -> tuple[float, float]:
        return fidelity_to_dense(logits, self.dense_logits)


class ThresholdSearch(DenseReference):
    """Fits per-stage thresholds to a budget, counting the calibration forwards it runs."""

    def __init__(self, model: GatedViT, images: torch.Tensor, dense_logits: torch.Tensor, reference_macs: float,
                 batch_size: int = 256):
        super().__init__(model, images, dense_logits, reference_macs, batch_size)
        self.forwards = 0

    def evaluate(self, profile: tuple[float, ...], knob: float) -> Trial:
        keep = [knob ** w if w > 0 else 1.0 for w in profile]
        out = self.forward.run(lambda s, pooled: quantile_threshold(pooled, keep[s]))
        self.forwards += 1
        return self.trial(out, profile, knob)

    def trial(self, out: StagedOutput, profile: tuple[float, ...], knob: float) -> Trial:
        kl, agreement = self.fidelity(out.logits)
        return Trial(profile=tuple(profile), knob=knob, thresholds=out.thresholds,
                     ratio=cost_ratio(self.model, out.lengths, self.reference), kl=kl, agreement=agreement,
                     mean_kept=tuple(float(v) for v in out.lengths.double().mean(0)))

    def fit_profile(self, profile: tuple[float, ...], budget: float) -> Optional[Trial]:
        """The largest knob whose cost is within the budget, by bisection; None if even t = 0 costs too much."""
        low = self.evaluate(profile, 0.0)
        if low.ratio > budget:
            return None
        high = self.evaluate(profile, 1.0)
        if high.ratio <= budget:
            return high
        lo, hi = 0.0, 1.0
        for _ in range(BISECTION_STEPS):
            if budget - low.ratio <= COST_TOLERANCE:
                break
            mid = (lo + hi) / 2
            trial = self.evaluate(profile, mid)
            if trial.ratio <= budget:
                lo, low = mid, trial
            else:
                hi = mid
        return low

    def search(self, budget: float, steps: int = 6, progress: bool = True) -> SearchResult:
        """Coarse grid of profiles, then a finer grid around the best; returns the minimum-KL fit."""
        check_budget(budget)
        floor = floor_ratio(self.model, self.reference)
        check_reachable(budget, floor, self.model)
        stages = len(self.model.stages)
        fits: dict[tuple[float, ...], Trial] = {}
        coarse = simplex_grid(stages, steps)
        self._fit_all(coarse, budget, fits, progress, f"calibrate {budget:g}")
        best = min(fits.values(), key=lambda t: t.kl)
        if stages > 1:
            self._fit_all(neighbours(best.profile, 2 * steps), budget, fits, progress, "refine")
            best = min(fits.values(), key=lambda t: t.kl)
        return SearchResult(budget=budget, floor=floor, best=best, trials=list(fits.values()), forwards=self.forwards)

    def _fit_all(self, profiles: Iterable[tuple[float, ...]], budget: float, fits: dict, progress: bool,
                 desc: str) -> None:
        todo = [p for p in profiles if p not in fits]
        bar = tqdm(todo, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        for profile in bar:
            trial = self.fit_profile(profile, budget)
            if trial is not None:
                fits[profile] = trial
                bar.set_postfix(best_kl=f"{min(t.kl for t in fits.values()):.4f}")
        if not fits:  # even all-at-min_keep exceeds the budget on this data (the floor check is analytic)
            raise RuntimeError("no profile meets the budget although it is above the analytic floor")

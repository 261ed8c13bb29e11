"""Per-block merge counts for the ToMe-style baseline (`calib.tome`) at a GFLOPs budget, chosen as the thresholds are:
the lowest KL from dense on the calibration set among settings whose MACs stay within the budget.

Merge counts are integers per block and their cost is data-independent arithmetic, so only KL needs forwards.
Seeds: ToMe's schedules (one count for every block as published, linearly decreasing, linearly increasing), each
at the fewest merges that meet the budget, with the budget's slack handed back. Refinement: exchange moves, in steps
of STEPS merges: one block merges `step` fewer, another just enough more to stay within the budget; the best move
of a round is taken while it lowers KL, within MAX_FORWARDS calibration forwards.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from pipeline.models import GatedViT

from calib.search import fidelity_to_dense
from calib.tome import check_merges, max_merges, tome_forward, tome_macs

STEPS = (4, 2, 1)  # merges moved between two blocks per exchange move, coarse first
MAX_FORWARDS = 150  # calibration forwards per budget
SCALE_STEP = 0.01  # resolution of a schedule's scale when finding its fewest merges within a budget


@dataclass(frozen=True)
class MergeTrial:
    merges: tuple[int, ...]  # patch tokens merged in each block
    ratio: float  # MACs / dense MACs (data-independent)
    kl: float
    agreement: float


@dataclass
class MergeResult:
    target: float
    best: MergeTrial
    constant: Optional[MergeTrial]  # one count for every block (ToMe as published), if any fits the budget
    seeds: dict[str, MergeTrial] = field(default_factory=dict)
    forwards: int = 0

    def to_dict(self) -> dict:
        return {"target": self.target, "best": asdict(self.best), "forwards": self.forwards,
                "constant": None if self.constant is None else asdict(self.constant),
                "seeds": {name: asdict(t) for name, t in self.seeds.items()}}


def schedule_shapes(depth: int) -> dict[str, tuple[float, ...]]:
    """ToMe's schedules as per-block weights: constant, and linear ramps down to 0 and up from 0 (mean 1)."""
    ramp = [2 * l / (depth - 1) for l in range(depth)] if depth > 1 else [1.0]
    return {"constant": (1.0,) * depth, "decreasing": tuple(reversed(ramp)), "increasing": tuple(ramp)}


class MergeSearch:
    def __init__(self, model: GatedViT, images: torch.Tensor, dense_logits: torch.Tensor, reference_macs: float,
                 batch_size: int = 256):
        check_merges(model, [0] * len(model.vit.blocks))
        self.model = model.eval()
        self.images = images
        self.dense_logits = dense_logits
        self.reference = reference_macs
        self.batch_size = batch_size
        self.geom = model.geometry()
        self._trials: dict[tuple[int, ...], MergeTrial] = {}

    def ratio(self, merges: Sequence[int]) -> float:
        return tome_macs(self.geom, merges) / self.reference

    def valid(self, merges: Sequence[int]) -> bool:
        patches = self.geom.num_patches
        for r in merges:
            if not 0 <= r <= max_merges(patches):
                return False
            patches -= r
        return True

    def measure(self, merges: Sequence[int]) -> MergeTrial:
        merges = tuple(int(r) for r in merges)
        if merges not in self._trials:
            chunks = self.images.split(self.batch_size)
            logits = torch.cat([tome_forward(self.model, chunk, merges) for chunk in chunks])
            self._trials[merges] = MergeTrial(merges, self.ratio(merges), *fidelity_to_dense(logits, self.dense_logits))
        return self._trials[merges]

    def scheduled(self, shape: Sequence[float], scale: float) -> tuple[int, ...]:
        """round(scale * shape[l]) merges in block l, at most what each block can merge."""
        merges, patches = [], self.geom.num_patches
        for w in shape:
            r = min(int(round(scale * w)), max_merges(patches))
            merges.append(r)
            patches -= r
        return tuple(merges)

    def fewest(self, shape: Sequence[float], target: float) -> Optional[tuple[int, ...]]:
        """The schedule of this shape at the smallest scale whose cost is within `target`; None if none is."""
        scale, top = 0.0, float(self.geom.num_patches)
        while scale <= top:
            merges = self.scheduled(shape, scale)
            if self.ratio(merges) <= target:
                return merges
            scale += SCALE_STEP
        return None

    def tighten(self, merges: Sequence[int], target: float) -> tuple[int, ...]:
        """Hand the budget's slack back: one merge fewer at a time, the earliest block where that still fits."""
        merges = list(merges)
        changed = True
        while changed:
            changed = False
            for layer in range(len(merges)):
                if merges[layer] > 0:
                    merges[layer] -= 1
                    if self.ratio(merges) <= target:
                        changed = True
                        break
                    merges[layer] += 1
        return tuple(merges)

    def exchange(self, merges: tuple[int, ...], give: int, take: int, step: int,
                 target: float) -> Optional[tuple[int, ...]]:
        """`step` fewer merges in block `give`, then the fewest more in block `take` that bring the cost within the
        target (and the slack handed back); None if no count there does."""
        if merges[give] < step:
            return None
        moved = list(merges)
        moved[give] -= step
        for extra in range(1, self.geom.num_patches):
            moved[take] = merges[take] + extra
            if not self.valid(moved):
                return None
            if self.ratio(moved) <= target:
                return self.tighten(moved, target)
        return None

    def search(self, target: float, max_forwards: int = MAX_FORWARDS, progress: bool = True) -> Optional[MergeResult]:
        """The minimum-KL merge counts within `target`; None if even the most merging costs more."""
        start = len(self._trials)
        seeds: dict[str, MergeTrial] = {}
        constant = None
        for name, shape in schedule_shapes(self.geom.depth).items():
            merges = self.fewest(shape, target)
            if merges is None:
                continue
            if name == "constant":
                constant = self.measure(merges)
            seeds[name] = self.measure(self.tighten(merges, target))
        if not seeds:
            return None
        best = min(seeds.values(), key=lambda t: t.kl)
        pairs = list(itertools.permutations(range(self.geom.depth), 2))
        bar = tqdm(total=max_forwards, desc=f"merging {target:.3f}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        for step in STEPS:
            while len(self._trials) - start < max_forwards:
                moves = {m for give, take in pairs if (m := self.exchange(best.merges, give, take, step, target))}
                moves = sorted(moves - {best.merges})[:max_forwards - (len(self._trials) - start)]
                trials = [self.measure(m) for m in moves]
                bar.n = min(len(self._trials) - start, max_forwards)
                bar.set_postfix(kl=f"{best.kl:.4f}")
                better = min(trials, key=lambda t: t.kl, default=None)
                if better is None or better.kl >= best.kl:
                    break
                best = better
        bar.close()
        return MergeResult(target=target, best=best, constant=constant, seeds=seeds,
                           forwards=len(self._trials) - start)

"""`tokengate calibrate`: fit thresholds to one or more GFLOPs budgets, compare with fixed-rate top-k and ToMe-style
token merging at the same cost, and write a run directory that the rest of the pipeline treats like a trained one."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from pipeline.config import replace
from pipeline.data import Dataset, load_dataset
from pipeline.errors import fail
from pipeline.evaluate import EvalResult, evaluate
from pipeline.models import GatedViT, build_student
from pipeline.train.trainer import compare

from calib.baseline import MAX_TRIALS, BaselineResult, FixedRateSearch, fixed_model
from calib.cost import check_budget, check_reachable, cost_ratio, floor_ratio, reference_macs
from calib.inputs import model_inputs
from calib.run_dir import prepare_out, write_run
from calib.search import SearchResult, ThresholdSearch
from calib.sets import CalibSet
from calib.source import Source
from calib.tome import evaluate_tome
from calib.tome_export import BASELINE_FILE, export_tome
from calib.tome_search import MAX_FORWARDS, MergeResult, MergeSearch, MergeTrial


@dataclass
class Point:
    """One budget: the search on the calibration set, and both models measured on the validation split."""

    search: SearchResult
    val: EvalResult
    fixed: Optional[BaselineResult] = None
    fixed_val: Optional[EvalResult] = None
    uniform_val: Optional[EvalResult] = None
    merging: Optional[MergeResult] = None
    merging_val: Optional[EvalResult] = None
    constant_val: Optional[EvalResult] = None

    def to_dict(self, dense: EvalResult) -> dict:
        best = self.search.best
        row = {"budget": self.search.budget, "thresholds": list(best.thresholds), "profile": list(best.profile),
               "calib_gflops_ratio": best.ratio, "calib_kl": best.kl, "calib_agreement": best.agreement,
               "top1": self.val.top1, "gflops_ratio": self.val.gflops / dense.gflops, "mean_kept": self.val.mean_kept}
        if self.fixed is not None:
            row["fixed"] = _fixed_row(self.fixed.best, self.fixed_val, dense)
            row["fixed_uniform"] = None if self.fixed.uniform is None else \
                _fixed_row(self.fixed.uniform, self.uniform_val, dense)
        if self.merging is not None:
            row["merging"] = _merging_row(self.merging.best, self.merging_val, dense)
            row["merging_constant"] = None if self.merging.constant is None else \
                _merging_row(self.merging.constant, self.constant_val, dense)
        return row


def _fixed_row(trial, result: Optional[EvalResult], dense: EvalResult) -> dict:
    row = {"counts": list(trial.counts), "rates": list(trial.rates), "calib_kl": trial.kl,
           "calib_agreement": trial.agreement}
    if result is not None:
        row.update(top1=result.top1, gflops_ratio=result.gflops / dense.gflops)
    return row


def _merging_row(trial: MergeTrial, result: Optional[EvalResult], dense: EvalResult) -> dict:
    row = {"merges": list(trial.merges), "calib_gflops_ratio": trial.ratio, "calib_kl": trial.kl,
           "calib_agreement": trial.agreement}
    if result is not None:
        row.update(top1=result.top1, gflops_ratio=result.gflops / dense.gflops)
    return row


def check_set_matches(cal: CalibSet, dataset: Dataset) -> None:
    """A set built from another dataset calibrates the wrong distribution; its class names say so."""
    if list(cal.manifest.classes) != list(dataset.class_names):
        raise fail(f"calibration set {cal.manifest.id} has classes {cal.manifest.classes[:4]}.., the model's data "
                   f"has {list(dataset.class_names)[:4]}..", "build a set from the model's own data: python -m calib "
                   "build --image-folder DIR --out calib/sets/NAME (or --fashion-mnist ROOT)")


def calibrated_config(source: Source, budget: float, dropped_tokens: str = "context",
                      merge_block: Optional[int] = 0, pruning: bool = True):
    """The run's config: the source's, with the weights now in the run dir, no gates left to train, what becomes
    of pruned tokens (`gates.dropped_tokens`), the block before which similar tokens merge (`gates.merge_block`),
    and no pruning stages at all with `pruning=False` (the merge stage alone: the shortest graph)."""
    cfg = source.cfg
    stages = cfg.gates.token_stages if pruning else ()
    return replace(cfg, model=replace(cfg.model, checkpoint=None, pretrained=False),
                   gates=replace(cfg.gates, static=False, dynamic="none", dropped_tokens=dropped_tokens,
                                 merge_block=merge_block, token_stages=stages),
                   budget=replace(cfg.budget, target=budget))


def calibrate(source: Source, budget: float, cal: CalibSet, out: Path, sweep: Sequence[float] = (),
              baseline: bool = True, merging: bool = True, steps: int = 6, batch_size: int = 256, progress: bool = True,
              dropped_tokens: str = "context", merge_block: Optional[int] = 0, pruning: bool = True) -> dict:
    """Calibrate every budget of `sweep` plus `budget`, write the run for `budget`; returns summary.json's content.
    `pruning=False` calibrates the merge stage alone (it needs `merge_block`)."""
    for b in (budget, *sweep):
        check_budget(b)
    if not pruning and merge_block is None:
        raise fail("a model with neither a merge stage nor pruning stages has nothing to calibrate",
                   "drop --no-merge or --merge-only")
    notes = prepare_out(out, Path(source.origin["run"]) if "run" in source.origin else None)
    started = time.time()
    cfg = calibrated_config(source, budget, dropped_tokens, merge_block, pruning)
    dataset = load_dataset(cfg.data, cfg.model)
    check_set_matches(cal, dataset)
    images = model_inputs(cal, cfg.model.in_chans, cfg.model.img_size, dataset.mean, dataset.std)
    teacher = source.teacher.eval()
    with torch.no_grad():
        dense_logits = torch.cat([teacher.forward_dropped(chunk)[0] for chunk in images.split(batch_size)])
    reference = reference_macs(teacher)
    student = build_student(cfg, weights_from=teacher, static_gates=False).eval()
    # The fixed-rate baselines prune at the source's token stages alone, as published (no merge stage).
    plain = student if merge_block is None else build_student(
        replace(cfg, gates=replace(cfg.gates, merge_block=None, token_stages=source.cfg.gates.token_stages)),
        weights_from=teacher, static_gates=False).eval()
    floor = floor_ratio(student, reference)
    for b in (budget, *sweep):  # before anything slow runs
        check_reachable(b, floor, student)
    searcher = ThresholdSearch(student, images, dense_logits, reference, batch_size)
    fixed_searcher = FixedRateSearch(plain, images, dense_logits, reference, batch_size) if baseline else None
    merge_searcher = MergeSearch(teacher, images, dense_logits, reference, batch_size) if merging else None
    dense = evaluate(teacher, dataset, dataset.val, batch_size, desc="dense val")
    points: dict[float, Point] = {}
    for b in sorted({budget, *sweep}):
        points[b] = measure_budget(searcher, fixed_searcher, student, plain, dataset, dense, b, steps, batch_size,
                                   progress)
        if merge_searcher is not None:
            measure_merging(points[b], merge_searcher, dataset, dense, batch_size, progress)
            if points[b].merging is None:
                notes.append(f"token merging cannot get down to {points[b].val.gflops / dense.gflops:.3f} of dense "
                             f"GFLOPs (budget {b:g}): no merging baseline there")
    main = points[budget]
    set_thresholds(student, main.search.best.thresholds)
    cfg, student, idle = drop_idle_stages(cfg, student, teacher)
    deployed = deployed_cost(student, images, reference, batch_size)
    if abs(deployed - main.search.best.ratio) > 1e-6:  # a token exactly at a threshold, decided by batch composition
        notes.append(f"as deployed the thresholds cost {deployed:.4f} on the calibration set, "
                     f"{main.search.best.ratio:.4f} in the search")
    summary = {
        "teacher": _row(dense), "student": _row(main.val, searcher.model.stages, idle),
        "student_vs_teacher": compare(dense, main.val),
        "calibration": {
            "method": "pooled-quantile thresholds per stage; profile grid + bisection on the knob; min KL to dense",
            "dropped_tokens": dropped_tokens,
            "baseline_method": None if not baseline else "fixed top-k counts per stage: every whole-token split that "
                               f"matches the cost (the {MAX_TRIALS} closest), min KL to dense",
            "merging_method": None if not merging else "ToMe-style bipartite soft matching with proportional "
                              "attention, merge counts per block from ToMe's schedules refined by exchange moves "
                              f"(at most {MAX_FORWARDS} forwards), MACs within the cost, min KL to dense",
            **main.to_dict(dense), "searched_stages": list(searcher.model.stages), "idle_stages_removed": idle,
            "stages": list(student.stages), "merge_block": student.merge_block,
            "calib_gflops_ratio_deployed": deployed, "calib_set": cal.describe(),
            "source": source.origin, "forwards": searcher.forwards, "seconds": round(time.time() - started, 1),
            "sweep": [p.to_dict(dense) for p in points.values()] if sweep else [],
        },
    }
    write_run(out, cfg, teacher, student, summary)
    if main.merging is not None:  # the baseline as a file too, timed beside the calibrated model's
        export_tome(teacher, main.merging.best.merges, cfg, out)
    else:
        (out / BASELINE_FILE).unlink(missing_ok=True)  # an earlier calibration's, of other merges
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return summary


def measure_budget(searcher: ThresholdSearch, fixed_searcher: Optional[FixedRateSearch], student: GatedViT,
                   plain: GatedViT, dataset: Dataset, dense: EvalResult, budget: float, steps: int, batch_size: int,
                   progress: bool) -> Point:
    result = searcher.search(budget, steps, progress)
    set_thresholds(student, result.best.thresholds)
    point = Point(result, evaluate(student, dataset, dataset.val, batch_size, desc=f"calibrated {budget:g} val"))
    if fixed_searcher is not None:
        # Same GFLOPs as the calibrated model on the data both are measured on (its cost varies with the data).
        point.fixed = fixed_searcher.search(point.val.gflops / dense.gflops, progress=progress)
        point.fixed_val = evaluate(fixed_model(plain, point.fixed.best.counts), dataset, dataset.val, batch_size,
                                   desc="fixed-rate val")
        uniform = point.fixed.uniform
        if uniform is not None:
            point.uniform_val = point.fixed_val if uniform.counts == point.fixed.best.counts else evaluate(
                fixed_model(plain, uniform.counts), dataset, dataset.val, batch_size, desc="uniform-rate val")
    return point


def measure_merging(point: Point, searcher: MergeSearch, dataset: Dataset, dense: EvalResult, batch_size: int,
                    progress: bool) -> None:
    """The merging baseline at the calibrated model's validation GFLOPs (as the fixed-rate one), on the teacher."""
    point.merging = searcher.search(point.val.gflops / dense.gflops, progress=progress)
    if point.merging is None:
        return
    model = searcher.model
    point.merging_val = evaluate_tome(model, dataset, dataset.val, point.merging.best.merges, batch_size,
                                      show_progress=progress, desc="merging val")
    constant = point.merging.constant
    if constant is not None:
        point.constant_val = point.merging_val if constant.merges == point.merging.best.merges else evaluate_tome(
            model, dataset, dataset.val, constant.merges, batch_size, show_progress=progress,
            desc="constant merging val")


def drop_idle_stages(cfg, student: GatedViT, teacher: GatedViT) -> tuple:
    """Leave out of the written model the pruning stages whose threshold keeps every token (below 0: relative
    scores are never negative). They change no output and no MACs, but each costs an exported graph its scoring,
    selection and context nodes. Returns (config, student, the blocks of the stages removed); at least one stage
    stays."""
    idle = [block for s, block in enumerate(student.stages)
            if not student.is_merge_stage(s) and float(student.thresholds[s].detach()) < 0]
    if not idle or len(idle) == len(student.stages):
        return cfg, student, []
    cfg = replace(cfg, gates=replace(cfg.gates, token_stages=tuple(b for b in student.token_stages if b not in idle)))
    kept = build_student(cfg, weights_from=teacher, static_gates=False).eval()
    set_thresholds(kept, [float(t) for block, t in zip(student.stages, student.thresholds.detach()) if block not in idle])
    return cfg, kept, idle


def set_thresholds(model: GatedViT, thresholds: Sequence[float]) -> None:
    with torch.no_grad():
        model.thresholds.copy_(torch.tensor(list(thresholds), dtype=model.thresholds.dtype))


@torch.no_grad()
def deployed_cost(model: GatedViT, images: torch.Tensor, reference: float, batch_size: int) -> float:
    """What the saved model, run as deployed (forward_dropped), costs on the calibration set: the search's number,
    unless a score sits exactly on a threshold (the thresholds are midpoints, so that takes a 1e-7 coincidence)."""
    lengths = torch.cat([model.forward_dropped(chunk)[1] for chunk in images.split(batch_size)])
    return cost_ratio(model, lengths, reference)


def _row(result: EvalResult, stages: Sequence[int] = (), idle: Sequence[int] = ()) -> dict:
    """summary.json's row of a model; `idle` stages (removed from the written model) drop out of the kept counts."""
    kept = [k for block, k in zip(stages, result.mean_kept) if block not in idle] if stages else result.mean_kept
    return {"top1": result.top1, "gflops": result.gflops, "params": result.params, "mean_kept_tokens": kept}

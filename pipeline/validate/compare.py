"""The comparator: an artifact's runner and its PyTorch reference over the same batches, at every batch size.

For each batch size the whole validation split runs in shuffled compositions; the reference runs the very same
batches, so `max_abs_diff_vs_torch` compares like with like even for batch-dependent models. Batch 1 is always
run: it is what the other sizes are compared with.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.errors import fail
from pipeline.runners.base import Runner, RunnerOutput
from pipeline.validate.batches import compositions
from pipeline.validate.subject import Subject, describe

SCREEN_BATCH = 256


@dataclass(frozen=True)
class Tolerances:
    vs_torch: float
    vs_b1: float
    max_flips: int


@dataclass(frozen=True)
class BatchResult:
    top1: float  # percent
    max_abs_logit_diff_vs_b1: float
    flips_vs_b1: int
    max_abs_diff_vs_torch: float
    mean_kept_tokens: list[float]  # per stage, prefix included; [] for the dense teacher


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise fail(f"--batch-sizes {text!r} is not a comma list of positive integers", "write e.g. 1,2,7,32,64")
    return sizes


def validate(artifact: str | Path, batch_sizes: Optional[Sequence[int]] = None, runtime: Optional[str] = None,
             data_root: Optional[str] = None, limit: int = 0, seed: int = 0, show_progress: bool = True,
             overrides: Sequence[str] = (), references: Optional[dict] = None) -> dict:
    """Run the comparison and return the report (the JSON `tokengate validate --json` writes).

    `overrides` are `validate.KEY=VALUE` assignments over the recorded config, e.g. looser tolerances for fp16.
    `references`: a dict shared by several calls (several flavors of one run), in which the PyTorch reference's
    logits are kept, so each reference model runs once.

    A batch-invariant model's reference runs once, in batches of SCREEN_BATCH, and every batch size is compared
    with it: its logits do not depend on the batch (to float rounding, far below validate.tol_vs_torch). Group-gated
    models decide per batch, so their reference runs the very same batches as the artifact at every size.
    """
    from pipeline.runners.factory import make_runner

    subject = describe(artifact)
    cfg = subject.config
    if data_root:
        cfg = replace(cfg, data=replace(cfg.data, root=str(data_root)))
    if any(not item.startswith("validate.") for item in overrides):
        raise fail(f"--set {next(i for i in overrides if not i.startswith('validate.'))} changes the model or data",
                   "validate accepts validate.* keys only, e.g. --set validate.tol_vs_torch=1e-3")
    cfg = cfg.with_overrides(overrides) if overrides else cfg
    sizes = sorted(set(batch_sizes or cfg.validate.batch_sizes) | {1})
    runner = make_runner(artifact, runtime)
    opened = Path(getattr(runner, "path", subject.artifact))
    if subject.kind == "onnx" and opened != Path(subject.artifact):
        subject = describe(opened)  # a GPU provider opened the standard-op sibling: compare and report that file
    reference = None if subject.kind == "run" else reference_runner(subject)
    data = _ValidationData(cfg, limit)
    shared = None
    if reference is not None and subject.batch_invariant:
        key = (str(subject.run_dir), subject.reference_model, tuple(subject.caps or ()), cfg.data, limit)
        cache = references if references is not None else {}
        if key not in cache:
            cache[key] = _run_batch_size(reference, None, data, SCREEN_BATCH, seed, show_progress).logits
        shared = cache[key]
    results = {b: _run_batch_size(runner, None if shared is not None else reference, data, b, seed, show_progress)
               for b in sizes}
    if shared is not None:
        for out in results.values():
            out.reference = shared
    return _report(subject, Path(artifact), runner, reference, data, results, Tolerances(
        cfg.validate.tol_vs_torch, cfg.validate.tol_vs_b1, cfg.validate.max_flips))


def reference_runner(subject: Subject) -> Runner:
    """The PyTorch model an artifact is compared with: its run's student (with the capped flavor's caps) or teacher,
    on the CPU with one thread (beside another runtime's threads, more would wait at every barrier)."""
    from pipeline.runners.torch_runner import TorchRunner

    return TorchRunner(subject.run_dir, subject.reference_model, subject.caps, device="cpu", threads=1)


def torch_gap(logits: np.ndarray, reference: np.ndarray) -> float:
    """max |logits - reference| as validate reports it (`max_abs_diff_vs_torch`; NaN/Inf: inf), measured by
    Polygraphy's Comparator: the statistic `polygraphy run --check-error-stat max --rtol 0` holds to --atol."""
    from pipeline.runners.compare import logit_gap

    return logit_gap(logits, reference, math.inf).max_abs


class _ValidationData:
    """The validation split as model inputs, with non-finite samples screened out once and remembered."""

    def __init__(self, cfg, limit: int):
        from pipeline.data import load_dataset, stratified_indices
        from pipeline.runners.inputs import nonfinite_samples

        self.dataset = load_dataset(cfg.data, cfg.model)
        split = self.dataset.val
        if limit:
            split = split.subset(stratified_indices(split.labels, limit, cfg.data.split_seed))
        self.split = split
        bad = [start + int(i) for start in range(0, len(split), SCREEN_BATCH)
               for i in nonfinite_samples(self._inputs(np.arange(start, min(start + SCREEN_BATCH, len(split)))))]
        self.excluded = [{"index": i, "id": split.ids[i]} for i in bad]
        self.kept = np.setdiff1d(np.arange(len(split)), np.asarray(bad, dtype=np.int64))
        if not self.kept.size:
            raise fail(f"all {len(split)} validation images are NaN/Inf after preprocessing",
                       "check data.mean/data.std (a zero std divides by zero)")
        self.labels = split.labels.numpy()[self.kept]

    def _inputs(self, split_indices: np.ndarray) -> np.ndarray:
        return self.dataset.to_input(self.split.raw(split_indices)).numpy()

    def inputs(self, positions: np.ndarray) -> np.ndarray:
        """Model inputs for positions among the kept (finite) samples."""
        return self._inputs(self.kept[positions])


@dataclass
class _Outputs:
    logits: np.ndarray
    kept: Optional[np.ndarray]
    reference: Optional[np.ndarray]


def _run_batch_size(runner: Runner, reference: Optional[Runner], data: _ValidationData, batch_size: int, seed: int,
                    show_progress: bool) -> _Outputs:
    from pipeline.progress import progress

    count = len(data.kept)
    out: Optional[_Outputs] = None
    for positions in progress(compositions(count, batch_size, seed), desc=f"validate batch {batch_size}",
                              unit="batch", leave=False, disable=not show_progress):
        images = data.inputs(positions)
        got: RunnerOutput = runner.infer(images)
        ref = reference.infer(images).logits if reference is not None else None
        if out is None:
            out = _Outputs(np.empty((count, got.logits.shape[1]), np.float32),
                           None if got.kept_tokens is None else np.empty((count, got.kept_tokens.shape[1]), np.int32),
                           None if ref is None else np.empty((count, ref.shape[1]), np.float32))
        out.logits[positions] = got.logits
        if out.kept is not None:
            out.kept[positions] = got.kept_tokens
        if out.reference is not None:
            out.reference[positions] = ref
    return out


def _report(subject: Subject, requested: Path, runner: Runner, reference: Optional[Runner], data: _ValidationData,
            outputs: dict[int, _Outputs], tol: Tolerances) -> dict:
    """The report of the file that ran (`artifact`); `requested` differs where a GPU provider opened a sibling."""
    base = outputs[1]
    results, failures = {}, []
    for size, out in outputs.items():
        if not np.isfinite(out.logits).all():
            failures.append(f"batch {size}: {int((~np.isfinite(out.logits)).any(1).sum())} samples gave NaN/Inf logits")
        result = BatchResult(
            top1=100.0 * float((out.logits.argmax(1) == data.labels).mean()),
            max_abs_logit_diff_vs_b1=_max_abs(out.logits, base.logits),
            flips_vs_b1=int((out.logits.argmax(1) != base.logits.argmax(1)).sum()),
            max_abs_diff_vs_torch=0.0 if out.reference is None else torch_gap(out.logits, out.reference),
            mean_kept_tokens=[] if out.kept is None else out.kept.mean(axis=0).tolist(),
        )
        results[str(size)] = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                              for k, v in asdict(result).items()}  # strict JSON has no inf; failures say why
        failures += _broken(size, result, tol, subject.batch_invariant)
    top1 = [r["top1"] for r in results.values()]
    return {
        "artifact": str(subject.artifact), "requested": str(requested), "runtime": runner.runtime, "results": results,
        "flavor": subject.flavor,
        "reference": "self" if reference is None else f"torch {subject.reference_model} of {subject.run_dir}",
        "images": int(len(data.kept)), "batch_invariant": subject.batch_invariant,
        "top1_spread": max(top1) - min(top1), "tolerances": asdict(tol),
        "excluded_samples": data.excluded, "failures": failures, "passed": not failures,
    }


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| (in float64, so the difference itself is exact); NaN/Inf become inf: no tolerance holds.

    Ours, not Polygraphy's: it compares one runner with itself across batch compositions (logits gathered by
    sample), which its Comparator, running every runner on the same feeds, does not do.
    """
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return diff if math.isfinite(diff) else math.inf


def _broken(size: int, r: BatchResult, tol: Tolerances, invariant: bool) -> list[str]:
    broken = []
    if not r.max_abs_diff_vs_torch <= tol.vs_torch:
        broken.append(f"batch {size}: max |logit - torch| = {r.max_abs_diff_vs_torch:.3g} > {tol.vs_torch:g} "
                      "(validate.tol_vs_torch)")
    if invariant and not r.max_abs_logit_diff_vs_b1 <= tol.vs_b1:
        broken.append(f"batch {size}: max |logit - logit at batch 1| = {r.max_abs_logit_diff_vs_b1:.3g} > "
                      f"{tol.vs_b1:g} (validate.tol_vs_b1)")
    if invariant and r.flips_vs_b1 > tol.max_flips:
        broken.append(f"batch {size}: {r.flips_vs_b1} top-1 flips vs batch 1 > {tol.max_flips} (validate.max_flips)")
    return broken

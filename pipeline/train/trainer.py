"""`tokengate train`: dense teacher, then the student in two stages (search + slice, fine-tune), then a summary.

Each phase checkpoints after every epoch; re-running the same command on the same --out resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from pipeline.progress import progress

from pipeline.artifacts import read_json, update_summary, write_json
from pipeline.config import Config, PhaseConfig, config_from_dict, replace
from pipeline.data import Dataset, Split, load_dataset, stratified_indices
from pipeline.errors import fail
from pipeline.evaluate import EvalResult, evaluate
from pipeline.flops import dense_macs
from pipeline.models import GatedViT, build_student, build_teacher, load_student, load_teacher, save_student, save_teacher
from pipeline.models.build import STUDENT_FILE, TEACHER_FILE
from pipeline.models.factory import check_architecture
from pipeline.models.gates import group_ids_for, split_sizes
from pipeline.train import losses
from pipeline.train.distributed import Runtime, all_reduce_mean, barrier, init_runtime, shutdown
from pipeline.train.resume import load_phase, save_phase
from pipeline.train.teacher_targets import TeacherTargets, teacher_targets

SLICED_FILE = "ckpt/sliced.safetensors"
# (images, labels, the images' indices in the training split, generator) -> (loss, metrics)
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Phase:
    """One optimisation phase: what to optimise, at which rates, and the loss of one batch."""

    name: str
    model: GatedViT
    settings: PhaseConfig
    groups: list[dict]
    step: StepFn


def train(cfg: Config, out: str | Path) -> dict:
    """Run (or resume) every phase and return summary.json's content."""
    out = Path(out)
    runtime = init_runtime(cfg.train.threads)
    try:
        dataset = load_dataset(cfg.data, cfg.model)  # bad data or models fail before the run dir is touched
        check_architecture(cfg.model)
        check_trainable_gates(cfg)
        check_budget(cfg)
        initial = None
        if not (out / TEACHER_FILE).is_file():
            torch.manual_seed(cfg.train.seed)
            initial = build_teacher(cfg)  # loads model.checkpoint / pretrained weights: fails before any write
        prepare_run_dir(cfg, out, runtime)
        log = JsonLog(out / "train_log.jsonl", enabled=runtime.is_main)
        teacher = train_teacher(cfg, dataset, out, runtime, log, initial)
        student = train_student(cfg, teacher, dataset, out, runtime, log)
        return summarise(cfg, teacher, student, dataset, out, runtime)
    finally:
        shutdown()


def prepare_run_dir(cfg: Config, out: Path, runtime: Runtime) -> None:
    """Refuse to mix two configs in one run directory; otherwise record the config (resuming is automatic)."""
    existing = out / "config.json"
    if existing.is_file():
        try:
            old = config_from_dict(read_json(existing)).to_dict()
        except (json.JSONDecodeError, Exception) as exc:  # an unreadable or outdated config.json is not ours to reuse
            raise fail(f"{existing} cannot be read ({exc})", f"pass a new --out, or delete {out} to start over") from None
        if old != cfg.to_dict():
            keys = _diff_keys(old, cfg.to_dict())
            raise fail(f"{out} holds a run with a different config (differs at: {', '.join(keys[:4])})",
                       f"pass a new --out, or delete {out} to start over")
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(existing, cfg.to_dict())
    barrier()


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            keys += _diff_keys(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            keys.append(prefix + key)
    return keys


# ---- phases ------------------------------------------------------------------------------------------------
def train_teacher(cfg: Config, dataset: Dataset, out: Path, runtime: Runtime, log: "JsonLog",
                  initial: Optional[GatedViT]) -> GatedViT:
    """Train (or fine-tune, from model.checkpoint) the dense teacher; a finished one is loaded instead."""
    if (out / TEACHER_FILE).is_file():
        return load_teacher(out, cfg).to(runtime.device)
    model = initial.to(runtime.device)

    def step(images, labels, _index, _generator):
        logits, _ = model.forward_masked(images)
        ce = F.cross_entropy(logits, labels, label_smoothing=cfg.train.label_smoothing)
        return ce, {"ce": ce}

    groups = [{"params": _decayed(model), "weight_decay": cfg.train.teacher.weight_decay},
              {"params": _not_decayed(model), "weight_decay": 0.0}]
    run_phase(Phase("teacher", model, cfg.train.teacher, groups, step), cfg, dataset, out, runtime, log)
    if runtime.is_main:
        save_teacher(model, out / TEACHER_FILE, cfg)
    barrier()
    return model.eval()


def train_student(cfg: Config, teacher: GatedViT, dataset: Dataset, out: Path, runtime: Runtime,
                  log: "JsonLog") -> GatedViT:
    """Stage 1 searches static gates (with token gates) under the budget and slices; stage 2 fine-tunes.

    With dynamic group gates, stage 2 runs once per sub-group split mode, each from the same sliced model, so the
    batch-size consistency of the modes can be compared; the first mode's student is student.safetensors.
    """
    if (out / STUDENT_FILE).is_file():
        return load_student(out, cfg).to(runtime.device)
    reference = float(dense_macs(teacher.geometry()))
    splits = cfg.gates.subgroup_split
    started = time.time()
    targets = teacher_targets(teacher, dataset, cfg.train.finetune.batch_size, runtime)
    log.write({"phase": "teacher_logits", "event": "table" if targets.table is not None else "per_batch",
               "seconds": time.time() - started})
    if cfg.gates.static and not (out / SLICED_FILE).is_file():
        torch.manual_seed(cfg.train.seed + 1)
        model = build_student(cfg, weights_from=teacher).to(runtime.device)
        run_phase(_student_phase("search", model, targets, cfg, reference, splits[0]), cfg, dataset, out, runtime, log)
        if runtime.is_main:
            save_student(model.sliced(), out / SLICED_FILE, cfg)
        barrier()
    variants = splits if cfg.gates.dynamic == "group" else (None,)
    students = []
    for split in variants:
        torch.manual_seed(cfg.train.seed + 2)
        if cfg.gates.static:
            student = load_student(out, cfg, filename=SLICED_FILE).train()
        else:
            student = build_student(cfg, weights_from=teacher, static_gates=False)
        student = student.to(runtime.device)
        name = "finetune" if split is None else f"finetune-{split}"
        run_phase(_student_phase(name, student, targets, cfg, reference, split), cfg, dataset, out, runtime, log)
        if runtime.is_main and split is not None:
            save_student(student, out / variant_file(split), cfg)
        students.append(student)
    if runtime.is_main:
        save_student(students[0], out / STUDENT_FILE, cfg)
    barrier()
    return students[0].eval()


def check_trainable_gates(cfg: Config) -> None:
    """Refuse a merge stage up front: it has no training forward, and the student is only built after the teacher
    has trained."""
    if cfg.gates.merge_block is not None:
        raise fail(f"gates.merge_block={cfg.gates.merge_block} asks for a merge stage, which is training-free (it has "
                   "no masked training forward)",
                   "train with gates.merge_block=null; tokengate calibrate adds the merge stage to a trained run")


def check_budget(cfg: Config) -> None:
    """Refuse a budget the student cannot reach, before spending any time training towards it."""
    probe = build_student(replace(cfg, model=replace(cfg.model, checkpoint=None, pretrained=False)))
    reference = dense_macs(probe.geometry())
    floor = probe.minimum_macs() / reference
    if cfg.budget.target < floor:
        raise fail(f"budget.target={cfg.budget.target} is below {floor:.3f}, the cheapest this model can get (patch "
                   "embedding, head, the attention that scores tokens, and min_keep tokens per stage)",
                   f"raise budget.target to at least {floor:.3f}")


def variant_file(split: str) -> str:
    """The student trained with one sub-group split mode (dynamic group gates only)."""
    return f"student.split-{split}.safetensors"


def _student_phase(name: str, model: GatedViT, targets: TeacherTargets, cfg: Config, reference: float,
                   split: str | None) -> Phase:
    settings = cfg.train.search if name == "search" else cfg.train.finetune

    def step(images, labels, index, generator):
        group_ids = None
        if model.group_gates is not None:
            group_ids = group_ids_for(split_sizes(len(labels), split, generator), generator)
            group_ids = group_ids.to(images.device)
        logits, stats = model.forward_masked(images, group_ids)
        teacher_logits = targets(images, index)
        macs = model.macs(stats.tokens, stats.gates)
        ce = F.cross_entropy(logits, labels, label_smoothing=cfg.train.label_smoothing)
        kd = losses.distillation(logits, teacher_logits, cfg.train.kd_temperature)
        cost = losses.budget(macs, reference, cfg.budget.target)
        metrics = {"ce": ce, "kd": kd, "budget": cost, "flops_ratio": macs.mean() / reference}
        if model.static_gates is not None and cfg.budget.static_target is not None:
            static = model.static_macs()
            cost = cost + losses.static_ceiling(static, reference, cfg.budget.static_target)
            metrics["static_ratio"] = static / reference
        loss = ce + cfg.train.kd_weight * kd + cfg.budget.weight * cost
        return loss, metrics

    gates = [p for n, p in model.named_parameters() if n.startswith(("static_gates.", "group_gates."))]
    groups = [
        {"params": _decayed(model), "weight_decay": settings.weight_decay},
        {"params": _not_decayed(model), "weight_decay": 0.0},
        {"params": [model.thresholds], "weight_decay": 0.0, "lr": cfg.train.threshold_lr},
        {"params": gates, "weight_decay": 0.0, "lr": cfg.train.gate_lr},
    ]
    return Phase(name, model, settings, [g for g in groups if g["params"]], step)


def _decayed(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith("vit.") and p.ndim >= 2 and "pos_embed" not in n]


def _not_decayed(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith("vit.") and (p.ndim < 2 or "pos_embed" in n)]


# ---- the loop ----------------------------------------------------------------------------------------------
def run_phase(phase: Phase, cfg: Config, dataset: Dataset, out: Path, runtime: Runtime, log: "JsonLog") -> None:
    """Train `phase` for its epochs, resuming from its checkpoint; every epoch ends with a checkpoint."""
    settings, model = phase.settings, phase.model
    for group in phase.groups:
        group.setdefault("lr", settings.lr)
        group["base_lr"] = group["lr"]
    optimizer = torch.optim.AdamW(phase.groups, lr=settings.lr, betas=(0.9, 0.999))
    start = 0
    saved = load_phase(out, phase.name)
    if saved is not None:
        header, model_state, opt_state = saved
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        start = int(header["epoch"])
        if start < settings.epochs:
            log.write({"phase": phase.name, "event": "resumed", "epoch": start})
    if start >= settings.epochs:
        return
    wrapped = _TrainForward(model, phase.step)
    if runtime.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=True)
    steps_per_epoch = max(1, len(dataset.train) // (settings.batch_size * runtime.world))
    total_steps = steps_per_epoch * settings.epochs
    generator = torch.Generator().manual_seed(cfg.train.seed)
    for epoch in range(start, settings.epochs):
        model.train()
        generator.manual_seed(cfg.train.seed * 7919 + epoch)
        batches = dataset.batch_indices(dataset.train, settings.batch_size, shuffle=True, seed=cfg.train.seed,
                                        epoch=epoch, rank=runtime.rank, world=runtime.world, drop_last=True)
        bar = progress(batches, total=steps_per_epoch, desc=f"{phase.name} {epoch + 1}/{settings.epochs}",
                       disable=not runtime.is_main)
        started = time.time()
        for step_in_epoch, index in enumerate(bar):
            global_step = epoch * steps_per_epoch + step_in_epoch
            _set_lr(optimizer, global_step, total_steps, settings.warmup_steps)
            images, labels = dataset.batch(dataset.train, index)
            loss, metrics = wrapped(images.to(runtime.device), labels.to(runtime.device), index, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step_in_epoch % 20 == 0 or step_in_epoch == steps_per_epoch - 1:
                values = {k: float(all_reduce_mean(v.detach())) for k, v in {"loss": loss, **metrics}.items()}
                bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
                log.write({"phase": phase.name, "epoch": epoch, "step": global_step, **values,
                           "thresholds": [round(float(t), 4) for t in model.thresholds.detach()]})
        result = evaluate(model, dataset, _monitor_split(dataset), cfg.train.eval_batch_size, runtime.device,
                          show_progress=runtime.is_main, desc=f"{phase.name} val") if runtime.is_main else None
        if runtime.is_main:
            log.write({"phase": phase.name, "event": "epoch_end", "epoch": epoch + 1, "seconds": time.time() - started,
                       "monitor_top1": result.top1, "monitor_gflops": result.gflops, "mean_kept": result.mean_kept})
            save_phase(out, phase.name, model, optimizer, epoch + 1)
        barrier()


def _monitor_split(dataset: Dataset, size: int = 2000) -> Split:
    """A fixed stratified slice of the validation split for per-epoch monitoring; summaries use all of it."""
    return dataset.val.subset(stratified_indices(dataset.val.labels, size, seed=0))


class _TrainForward(nn.Module):
    """Routes the training step through `forward`, so DDP sees (and syncs) every parameter it touches."""

    def __init__(self, model: GatedViT, step: StepFn):
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, images, labels, index, generator):
        return self.step(images, labels, index, generator)


def _set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, warmup: int) -> None:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


# ---- summary -----------------------------------------------------------------------------------------------
def summarise(cfg: Config, teacher: GatedViT, student: GatedViT, dataset: Dataset, out: Path,
              runtime: Runtime) -> dict:
    """Measure teacher and student on the validation split (student in hard-drop mode) and write summary.json."""
    if not runtime.is_main:
        return {}
    results = {}
    for name, model in (("teacher", teacher), ("student", student)):
        result = evaluate(model, dataset, dataset.val, cfg.train.eval_batch_size, runtime.device, desc=f"{name} val")
        results[name] = result
        update_summary(out, name, {"top1": result.top1, "gflops": result.gflops, "params": result.params,
                                   "mean_kept_tokens": result.mean_kept})
    ratios = compare(results["teacher"], results["student"])
    return update_summary(out, "student_vs_teacher", ratios)


def compare(teacher: EvalResult, student: EvalResult) -> dict:
    return {"gflops_ratio": student.gflops / teacher.gflops, "params_ratio": student.params / teacher.params,
            "top1_drop": teacher.top1 - student.top1}


class JsonLog:
    """Append-only JSON-lines training log (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

"""The run directory a bench times: a trained run as it is, or one written here for a config.

For a config (random weights or a checkpoint: no training), the run holds what `tokengate train` would have written:
- teacher.safetensors: the config's timm model;
- student.safetensors: the teacher with `bench.heads_fraction` / `bench.mlp_fraction` of its heads and MLP channels
  sliced out, and token thresholds fitted without training so that it keeps `bench.keep_ratios` of the patch tokens
  (pooled quantiles of the scores, stage by stage, on the bench images);
- config.json, with `export.caps_images: sample-photos`, so its capped flavor takes its caps from the same images.
From there `tokengate export` and the bench treat it like any trained run. A run written for the same config is
reused (`bench_source.json` records a hash of the config).
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from pipeline.artifacts import read_json, write_json
from pipeline.bench.target import Target
from pipeline.errors import fail
from pipeline.models import GatedViT, Structure, build_teacher, save_student, save_teacher
from pipeline.models.build import STUDENT_FILE, TEACHER_FILE, resolve_stages

SOURCE_FILE = "bench_source.json"


def log(message: str, show: bool = True) -> None:
    if show:
        print(f"bench: {message}", file=sys.stderr, flush=True)


def bench_run(target: Target, root: Path, show: bool = True, overrides: Sequence[str] = ()) -> Path:
    """The run directory to bench: `target`'s own, or `root/<config name>[+KEY=VALUE...]` written (or reused) for a
    config (with the overrides it was given)."""
    if target.run_dir is not None:
        return target.run_dir
    run_dir = Path(root) / "+".join([target.name, *(o.replace("/", "_") for o in overrides)])
    key = config_key(target)
    source = run_dir / SOURCE_FILE
    if source.is_file() and read_json(source).get("key") == key and (run_dir / STUDENT_FILE).is_file():
        log(f"reusing {run_dir} (written for the same config)", show)
        return run_dir
    for stale in run_dir.glob("model.*.onnx*"):  # exports of another config's weights
        stale.unlink()
    write_config_run(target, run_dir, show)
    write_json(source, {"key": key, "config": str(target.source)})
    return run_dir


def config_key(target: Target) -> str:
    return hashlib.sha256(json.dumps(target.cfg.to_dict(), sort_keys=True).encode()).hexdigest()


def write_config_run(target: Target, run_dir: Path, show: bool = True) -> None:
    """teacher, sliced student with fitted thresholds, config.json (module docstring)."""
    from pipeline.images import load_images

    cfg, spec = target.cfg, target.spec
    cfg = replace(cfg, export=replace(cfg.export, caps_images="sample-photos"),
                  bench=replace(spec, images="sample-photos"))
    torch.manual_seed(spec.seed)
    teacher = build_teacher(cfg).eval()
    vit = copy.deepcopy(teacher.vit)
    fraction_structure(teacher, spec.heads_fraction, spec.mlp_fraction).apply(vit)
    student = GatedViT(vit, stages=resolve_stages(cfg, len(vit.blocks)), min_keep=cfg.gates.min_keep,
                       dropped_tokens=cfg.gates.dropped_tokens).eval()
    images = load_images(cfg, "sample-photos", spec.num_images, spec.seed)
    fit_keep_ratios(student, images.inputs, spec.keep_ratios)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_teacher(teacher, run_dir / TEACHER_FILE, cfg)
    save_student(student, run_dir / STUDENT_FILE, cfg)
    write_json(run_dir / "config.json", cfg.to_dict())
    log(f"wrote {run_dir}: {cfg.model.arch}, student with {sum(student.structure().heads)} heads, MLP "
        f"{student.structure().mlp_hidden[0]} wide, thresholds fitted to keep ratios {list(spec.keep_ratios)} on "
        f"{len(images)} images ({images.source})", show)


def spread(total: int, fraction: float, layers: int, at_least: int = 1) -> tuple[int, ...]:
    """round(fraction * total) per layer on average, as evenly as whole numbers allow (earlier layers get the
    extras), never below `at_least`: 0.75 of 6 heads over 12 layers gives 5, 4, 5, 4, ... (54 of 72)."""
    cuts = [int(fraction * total * i + 0.5) for i in range(layers + 1)]
    return tuple(max(at_least, min(total, b - a)) for a, b in zip(cuts, cuts[1:]))


def fraction_structure(model: GatedViT, heads_fraction: float, mlp_fraction: float) -> Structure:
    """Keep `heads_fraction` of each layer's heads and `mlp_fraction` of its MLP channels (the first ones: with
    random weights any choice costs the same)."""
    base = model.structure()
    depth = len(base.heads)
    heads = [spread(h, heads_fraction, depth)[i] for i, h in enumerate(base.heads)]
    mlp = [max(1, round(m * mlp_fraction)) for m in base.mlp_hidden]
    return Structure(tuple(heads), tuple(mlp))


def stage_shares(ratios: Sequence[float]) -> list[float]:
    """Cumulative keep ratios [r0, r1, ..] -> the share each stage keeps of its input: [r0, r1 / r0, ..]."""
    return [r / (ratios[i - 1] if i else 1.0) for i, r in enumerate(ratios)]


@torch.no_grad()
def fit_keep_ratios(model: GatedViT, images: torch.Tensor, ratios: Sequence[float],
                    batch_size: int = 32) -> torch.Tensor:
    """Set `model.thresholds` so the mean keep ratio after each stage is `ratios`; returns the lengths [N, S].

    Stage s keeps the share ratios[s] / ratios[s-1] of the patch tokens still valid before it, pooled over all
    images (`staged.StagedForward`: every image's scores at a stage are known before its threshold is chosen), in one
    pass. Images whose attention is concentrated keep fewer tokens than others: the thresholds stay adaptive.

    Args:
        ratios: cumulative shares of patch tokens kept after each stage, non-increasing, in (0, 1].
    """
    from pipeline.models.staged import StagedForward, quantile_threshold

    if len(ratios) != len(model.stages):
        raise fail(f"{len(ratios)} keep ratios for a model with {len(model.stages)} token stages {list(model.stages)}",
                   "give one cumulative keep ratio per stage (bench.keep_ratios), e.g. "
                   f"{[0.7, 0.49, 0.34][:len(model.stages)]}")
    shares = stage_shares(ratios)
    out = StagedForward(model.eval(), images, batch_size).run(lambda s, pooled: quantile_threshold(pooled, shares[s]))
    model.thresholds.copy_(torch.tensor(out.thresholds, dtype=model.thresholds.dtype))
    return out.lengths


def keep_ratios_of(lengths: torch.Tensor, num_prefix: int, num_patches: int) -> list[float]:
    """Mean share of patch tokens kept after each stage, from tokens kept [N, S] (prefix included)."""
    return [float(v) for v in ((lengths.double() - num_prefix) / num_patches).mean(0)]

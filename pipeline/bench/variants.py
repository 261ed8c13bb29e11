"""The four models a bench compares, as GatedViTs in inference mode:

- dense: the teacher (a run's teacher.safetensors, or the config's timm model);
- static: the sliced student's structure with every token kept (a run's student without its token stages, or the
  config's model with `bench.heads_fraction` / `bench.mlp_fraction` of heads and MLP channels sliced out);
- tokens: the teacher's weights with token thresholds and no structural pruning;
- combined: the student (a run's), or the static model with token thresholds.
Thresholds of the config models (and of a run's tokens model) are fitted afterwards by `keep.fit_keep_ratios`.
"""
from __future__ import annotations

import copy

import torch

from pipeline.bench.target import Target
from pipeline.config import BenchConfig
from pipeline.models import GatedViT, Structure, build_teacher, load_student, load_teacher
from pipeline.models.build import resolve_stages

MODELS = ("dense", "static", "tokens", "combined")


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


def without_tokens(model: GatedViT) -> GatedViT:
    """The same network with no token stages (every token kept)."""
    return GatedViT(copy.deepcopy(model.vit)).eval()


def with_stages(model: GatedViT, stages: tuple[int, ...], min_keep: int, dropped_tokens: str) -> GatedViT:
    return GatedViT(copy.deepcopy(model.vit), stages=stages, min_keep=min_keep, dropped_tokens=dropped_tokens).eval()


def build_variants(target: Target) -> dict[str, GatedViT]:
    """The four models; thresholds of `tokens` (and of `combined` for a config) are left to calibration."""
    if target.run_dir is not None:
        teacher = load_teacher(target.run_dir, target.cfg)
        student = load_student(target.run_dir, target.cfg)
        return {"dense": teacher, "static": without_tokens(student),
                "tokens": with_stages(teacher, student.stages, student.min_keep, student.dropped_tokens),
                "combined": student}
    return config_variants(target.cfg, target.spec)


def config_variants(cfg, spec: BenchConfig) -> dict[str, GatedViT]:
    torch.manual_seed(spec.seed)
    teacher = build_teacher(cfg).eval()
    stages = resolve_stages(cfg, len(teacher.vit.blocks))
    static = without_tokens(teacher)
    fraction_structure(teacher, spec.heads_fraction, spec.mlp_fraction).apply(static.vit)
    dropped = cfg.gates.dropped_tokens
    return {"dense": teacher, "static": static, "tokens": with_stages(teacher, stages, cfg.gates.min_keep, dropped),
            "combined": with_stages(static, stages, cfg.gates.min_keep, dropped)}

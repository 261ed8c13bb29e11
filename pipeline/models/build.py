"""Build teacher and student models from a Config, and save / load them as safetensors plus a JSON header."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from pipeline.checkpoints import read_header, read_state_dict, save_weights
from pipeline.config import Config, load_run_config, replace
from pipeline.errors import fail
from pipeline.models.factory import create_vit
from pipeline.models.gated_vit import GatedViT, Structure, default_stages

TEACHER_FILE = "teacher.safetensors"
STUDENT_FILE = "student.safetensors"


def resolve_stages(cfg: Config, depth: int) -> tuple[int, ...]:
    return tuple(cfg.gates.token_stages) if cfg.gates.token_stages is not None else default_stages(depth)


def build_teacher(cfg: Config) -> GatedViT:
    """The dense model: the timm ViT with no stages and no gates (so it runs the same code path as the student)."""
    return GatedViT(create_vit(cfg.model))


def build_student(cfg: Config, structure: Optional[Structure] = None, static_gates: Optional[bool] = None,
                  weights_from: Optional[GatedViT] = None) -> GatedViT:
    """The gated student; `weights_from` copies a (dense) model's ViT weights in, `structure` slices first."""
    model_cfg = replace(cfg.model, checkpoint=None, pretrained=False) if weights_from is not None else cfg.model
    vit = create_vit(model_cfg)
    if weights_from is not None:
        vit.load_state_dict(weights_from.vit.state_dict())
    if structure is not None:
        structure.apply(vit)
    return GatedViT(
        vit,
        stages=resolve_stages(cfg, len(vit.blocks)),
        min_keep=cfg.gates.min_keep,
        tau=cfg.gates.tau,
        init_threshold=cfg.gates.init_threshold,
        static_gates=cfg.gates.static if static_gates is None else static_gates,
        static_init=cfg.gates.static_init,
        dynamic=cfg.gates.dynamic,
        dropped_tokens=cfg.gates.dropped_tokens,
        merge_block=cfg.gates.merge_block,
    )


def save_teacher(model: GatedViT, path: str | Path, cfg: Config) -> None:
    """timm-format keys (loadable straight into timm.create_model), so the teacher is a plain ViT checkpoint."""
    save_weights(path, model.vit.state_dict(), {"format": "tokengate-teacher", "version": 1, "arch": cfg.model.arch})


def save_student(model: GatedViT, path: str | Path, cfg: Config) -> None:
    if model.static_gates is not None:
        raise ValueError("slice the student (model.sliced()) before saving it")
    header = {
        "format": "tokengate-student", "version": 1, "arch": cfg.model.arch,
        "structure": model.structure().to_dict(), "stages": list(model.token_stages),
        "num_prefix": model.num_prefix, "min_keep": model.min_keep,
        "thresholds": [float(t) for t in model.thresholds.detach()], "dropped_tokens": model.dropped_tokens,
        "merge_block": model.merge_block,
    }
    save_weights(path, model.state_dict(), header)


def load_teacher(run_dir: str | Path, cfg: Optional[Config] = None) -> GatedViT:
    cfg = cfg or load_run_config(run_dir)
    path = Path(run_dir) / TEACHER_FILE
    if not path.is_file():
        raise fail(f"{run_dir} has no {TEACHER_FILE}", "train it first: tokengate train --config ... --out RUN")
    model = build_teacher(replace(cfg, model=replace(cfg.model, checkpoint=None, pretrained=False)))
    _load_strict(model.vit, read_state_dict(path), path)
    return model.eval()


def load_student(run_dir: str | Path, cfg: Optional[Config] = None, filename: str = STUDENT_FILE) -> GatedViT:
    """Rebuild the sliced student from config.json + the safetensors header, without any static gates."""
    cfg = cfg or load_run_config(run_dir)
    path = Path(run_dir) / filename
    if not path.is_file():
        raise fail(f"{run_dir} has no {filename}", "train the run first: tokengate train --config ... --out RUN")
    header = read_header(path)
    if not header or header.get("format") != "tokengate-student":
        raise fail(f"{path} is not a TokenGate student checkpoint", "pass a run directory written by `tokengate train`")
    if header.get("arch") != cfg.model.arch:
        raise fail(f"{path} was trained as {header.get('arch')!r} but the config says {cfg.model.arch!r}",
                   "load it with the config.json of the run that wrote it")
    cfg = replace(cfg, model=replace(cfg.model, checkpoint=None, pretrained=False),
                  gates=replace(cfg.gates, token_stages=tuple(header["stages"]), min_keep=int(header["min_keep"]),
                                # checkpoints written before the option existed discarded their tokens
                                dropped_tokens=header.get("dropped_tokens", "discard"),
                                merge_block=header.get("merge_block")))
    model = build_student(cfg, structure=Structure.from_dict(header["structure"]), static_gates=False)
    _load_strict(model, read_state_dict(path), path)
    return model.eval()


def _load_strict(module: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = str(exc).split("\n\t")[1].strip() if "\n\t" in str(exc) else str(exc)
        raise fail(f"{path} does not fit this architecture ({detail})",
                   "load it with the config.json of the run that wrote it") from None
    if result.missing_keys or result.unexpected_keys:
        raise fail(f"{path} does not fit this architecture: missing {list(result.missing_keys)[:3]}, "
                   f"unexpected {list(result.unexpected_keys)[:3]}", "load it with the config.json of the run that wrote it")

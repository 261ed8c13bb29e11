"""What `tokengate calibrate` starts from: a run directory (its dense teacher) or a timm model plus a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from pipeline.artifacts import read_json
from pipeline.config import Config, load_config, load_run_config, replace
from pipeline.errors import fail
from pipeline.models import GatedViT, build_teacher, load_teacher
from pipeline.models.build import TEACHER_FILE

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fmnist-tiny.yaml"


@dataclass(frozen=True)
class Source:
    cfg: Config  # data, geometry and gates of the model to calibrate
    teacher: GatedViT  # dense, eval mode
    name: str  # for default output names
    origin: dict  # what summary.json records about where the weights came from
    trained: Optional[dict]  # the source run's summary.json, if it has a trained student (for the plot)


def resolve_source(model_or_run: str, checkpoint: Optional[str] = None, config: Optional[str] = None,
                   overrides: Sequence[str] = ()) -> Source:
    """A run directory (uses its config.json and teacher; --set may override data settings) or a timm model name
    with --checkpoint and a config for data and geometry (default: the embedded fmnist-tiny config)."""
    path = Path(model_or_run)
    if path.is_dir():
        if checkpoint:
            raise fail("--checkpoint is for a timm model name; a run directory brings its own teacher",
                       f"drop --checkpoint, or pass a model name instead of {model_or_run}")
        if config:
            raise fail("--config is for a timm model name; a run directory brings its own config.json",
                       "drop --config (use --set KEY=VALUE to change e.g. data.val_limit)")
        if not (path / TEACHER_FILE).is_file():
            raise fail(f"{path} has no {TEACHER_FILE} to calibrate", "pass a run trained by `tokengate train`")
        cfg = load_run_config(path)
        cfg = cfg.with_overrides(overrides) if overrides else cfg
        summary_path = path / "summary.json"
        summary = read_json(summary_path) if summary_path.is_file() else None
        trained = summary if summary and "student" in summary and "calibration" not in summary else None
        return Source(cfg, load_teacher(path, cfg), path.name, {"run": str(path), "teacher": str(path / TEACHER_FILE)},
                      trained)
    if "/" in model_or_run or model_or_run.endswith((".safetensors", ".pth", ".pt")):
        raise fail(f"{model_or_run} is neither a run directory nor a timm model name",
                   "pass runs/NAME (trained by `tokengate train`) or e.g. deit_tiny_patch16_224 --checkpoint FILE")
    cfg = load_config(config or DEFAULT_CONFIG, overrides)
    if not checkpoint and not cfg.model.pretrained:
        raise fail(f"{model_or_run} needs weights: calibrating random weights measures nothing",
                   "pass --checkpoint PATH (a dense timm state_dict), or --set model.pretrained=true when online")
    cfg = replace(cfg, model=replace(cfg.model, arch=model_or_run, checkpoint=checkpoint or cfg.model.checkpoint))
    teacher = build_teacher(cfg).eval()
    origin = {"arch": model_or_run, "checkpoint": checkpoint, "config": str(config or DEFAULT_CONFIG)}
    return Source(cfg, teacher, model_or_run, origin, None)

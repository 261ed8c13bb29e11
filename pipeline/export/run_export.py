"""Export a trained run directory: student flavors plus the dense teacher, with metadata from the run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from pipeline.artifacts import update_summary
from pipeline.config import Config, load_run_config
from pipeline.errors import fail
from pipeline.export.metadata import ExportInfo
from pipeline.export.onnx_export import (capped_limits, check_exportable, check_opset, export_onnx,
                                         expressible_flavors)
from pipeline.flavors import FLAVORS
from pipeline.models import GatedViT, load_student, load_teacher


def artifact_path(run_dir: str | Path, flavor: str) -> Path:
    return Path(run_dir) / f"model.{flavor}.onnx"


def export_run(run_dir: str | Path, flavors: Optional[Sequence[str]] = None, opset: Optional[int] = None,
               quantile: Optional[float] = None) -> dict[str, Path]:
    """Export the requested flavors of `run_dir` (None: every one its student can express, and dense); returns
    {flavor: path}. Every flavor is checked before the first file is written, so a refused one leaves nothing
    behind."""
    run_dir = Path(run_dir)
    unknown = [f for f in flavors or () if f not in FLAVORS]
    if unknown:
        raise fail(f"unknown flavor {unknown[0]!r}", f"use one of {', '.join(FLAVORS)} (or 'all')")
    cfg = load_run_config(run_dir)
    opset = opset or cfg.export.opset
    check_opset(opset)
    quantile = cfg.export.capped_quantile if quantile is None else quantile
    if not 0 < quantile <= 1:
        raise fail(f"--quantile {quantile} is outside (0, 1]", "use 1.0 (the largest kept count seen) or e.g. 0.99")
    student = load_student(run_dir, cfg) if flavors is None or any(f != "dense" for f in flavors) else None
    flavors = expressible_flavors(student) if flavors is None else tuple(flavors)
    teacher = load_teacher(run_dir, cfg) if "dense" in flavors else None
    for flavor in flavors:
        check_exportable(teacher if flavor == "dense" else student, flavor)
    written = {}
    for flavor in flavors:
        model = teacher if flavor == "dense" else student
        caps, rate = (None, None)
        if flavor == "capped":
            caps, rate = capped_limits(calibration_lengths(student, cfg), student.num_prefix, quantile)
        info = ExportInfo.of(model, cfg, flavor, run_dir, opset, caps, rate)
        written[flavor] = export_onnx(model, flavor, artifact_path(run_dir, flavor), info, opset, caps)
        if flavor == "capped":  # summary.json describes the capped file on disk, so only once it is written
            update_summary(run_dir, "capped", {"caps": caps, "quantile": quantile, "truncation_rate": rate})
    return written


@torch.no_grad()
def calibration_lengths(model: GatedViT, cfg: Config) -> torch.Tensor:
    """Kept tokens per stage [N, S] with adaptive (uncapped) selection, on the images `export.caps_images` names:
    the whole validation split, or the bench's sample photos."""
    from pipeline.images import load_images

    model = model.eval()
    if cfg.export.caps_images == "sample-photos":
        inputs = load_images(cfg, "sample-photos", cfg.bench.num_images, cfg.bench.seed).inputs
        return torch.cat([model.forward_dropped(chunk)[1] for chunk in inputs.split(64)])
    from pipeline.data import load_dataset

    data = load_dataset(cfg.data, cfg.model)
    return torch.cat([model.forward_dropped(images)[1] for images, _ in data.batches(data.val, 256)])

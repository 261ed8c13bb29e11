"""Export a trained run directory: student flavors plus the dense teacher, with metadata from the run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from pipeline.artifacts import update_summary
from pipeline.config import load_run_config
from pipeline.data import load_dataset
from pipeline.errors import fail
from pipeline.export.metadata import ExportInfo
from pipeline.export.onnx_export import FLAVORS, capped_limits, check_opset, export_onnx
from pipeline.models import GatedViT, load_student, load_teacher


def artifact_path(run_dir: str | Path, flavor: str) -> Path:
    return Path(run_dir) / f"model.{flavor}.onnx"


def export_run(run_dir: str | Path, flavors: Sequence[str], opset: Optional[int] = None,
               quantile: Optional[float] = None) -> dict[str, Path]:
    """Export the requested flavors of `run_dir`; returns {flavor: path}."""
    run_dir = Path(run_dir)
    unknown = [f for f in flavors if f not in FLAVORS]
    if unknown:
        raise fail(f"unknown flavor {unknown[0]!r}", f"use one of {', '.join(FLAVORS)} (or 'all')")
    cfg = load_run_config(run_dir)
    opset = opset or cfg.export.opset
    check_opset(opset)
    quantile = cfg.export.capped_quantile if quantile is None else quantile
    if not 0 < quantile <= 1:
        raise fail(f"--quantile {quantile} is outside (0, 1]", "use 1.0 (the largest kept count seen) or e.g. 0.99")
    student = load_student(run_dir, cfg) if any(f != "dense" for f in flavors) else None
    written = {}
    for flavor in flavors:
        model = load_teacher(run_dir, cfg) if flavor == "dense" else student
        caps, rate = (None, None)
        if flavor == "capped":
            caps, rate = capped_limits(_validation_lengths(student, cfg), student.num_prefix, quantile)
            update_summary(run_dir, "capped", {"caps": caps, "quantile": quantile, "truncation_rate": rate})
        info = ExportInfo(
            flavor=flavor, model="teacher" if flavor == "dense" else "student", config=cfg.to_dict(),
            stages=list(model.stages), thresholds=[float(t) for t in model.thresholds.detach()],
            min_keep=model.min_keep, num_prefix=model.num_prefix, caps=caps, truncation_rate=rate,
            input_shape=[cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size], opset=opset,
            run_dir=str(run_dir),
        )
        written[flavor] = export_onnx(model, flavor, artifact_path(run_dir, flavor), info, opset, caps)
    return written


@torch.no_grad()
def _validation_lengths(model: GatedViT, cfg) -> torch.Tensor:
    """Kept tokens per stage of every validation image, with adaptive (uncapped) selection."""
    data = load_dataset(cfg.data, cfg.model)
    model = model.eval()
    return torch.cat([model.forward_dropped(images)[1] for images, _ in data.batches(data.val, 256)])

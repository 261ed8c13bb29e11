"""The ToMe-style baseline as an ONNX file, so that its speed is measured on the runtime the calibrated model ships to,
in the same interleaved run (`tokengate calibrate`'s speed report, `tokengate bench RUN --baselines`).

It goes through the export path of every flavor (`pipeline.export.onnx_export`: the same exporter and graph passes),
and records what the bench needs in the file's metadata (`ExportInfo.baseline`: method, merges, MACs per image). Its
merge counts are static, so the graph has static token counts; ties between equal similarities break as in PyTorch
(`calib.tome.bipartite_merge`). A file whose ONNX Runtime logits leave PyTorch's by more than the run's
validate.tol_vs_torch is refused, and nothing is written.

The file records its exporter (`tome_exporter_id`: the flavors' exporter digest and this module's and calib/tome.py's
code), and `refresh_baseline` writes it again from the merges it records when another exporter wrote it, as the
bench does for a run's flavors (`tokengate bench RUN --baselines baseline.tome.onnx`).
"""
from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.config import Config, load_run_config
from pipeline.errors import TokenGateError, fail
from pipeline.export.exporter_id import exporter_id
from pipeline.export.metadata import ExportInfo, attach, read_info
from pipeline.export.onnx_export import apply_passes, trace_to_onnx, write_onnx
from pipeline.models import GatedViT, load_teacher

from calib.tome import check_merges, merging_logits, tome_macs

BASELINE_FILE = "baseline.tome.onnx"
CHECK_IMAGES = 8


class _Merging(nn.Module):
    def __init__(self, model: GatedViT, merges: Sequence[int]):
        super().__init__()
        self.model, self.merges = model, tuple(int(r) for r in merges)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return merging_logits(self.model, images, self.merges)


def export_tome(teacher: GatedViT, merges: Sequence[int], cfg: Config, run_dir: str | Path,
                path: str | Path | None = None, opset: int = 20) -> Path:
    """Write the dense `teacher` merging merges[l] tokens in block l to `path` (default RUN/baseline.tome.onnx)."""
    check_merges(teacher, merges)
    model = copy.deepcopy(teacher).eval()
    for block in model.vit.blocks:  # timm's own written-out attention: its SDPA path with a float mask does not
        block.attn.fused_attn = False  # export (pipeline.export.attention)
    module = _Merging(model, merges).eval()
    input_shape = [cfg.model.in_chans, cfg.model.img_size, cfg.model.img_size]
    proto = trace_to_onnx(module, input_shape, ["logits"], opset)
    passes = apply_passes(proto)
    check_parity(proto, module, input_shape, cfg.validate.tol_vs_torch)
    info = replace(ExportInfo.of(model, cfg, "tome", run_dir, opset), model="teacher", passes=passes,
                   baseline={"method": "ToMe-style bipartite soft matching with proportional attention",
                             "merges": [int(r) for r in merges], "macs": tome_macs(model.geometry(), merges)},
                   exporter=tome_exporter_id())
    attach(proto, info)
    return write_onnx(proto, Path(path) if path else Path(run_dir) / BASELINE_FILE)


@functools.lru_cache(maxsize=None)
def tome_exporter_id() -> str:
    """16 hex digits of sha256 over the flavors' exporter digest (`exporter_id`: the model, export and op code, the
    tracer's versions) and the sources of the code that shapes the merging graph (calib/tome.py and this module)."""
    digest = hashlib.sha256(exporter_id().encode() + b"\0")
    here = Path(__file__)
    for source in (here.with_name("tome.py"), here):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def refresh_baseline(run_dir: str | Path) -> Optional[Path]:
    """Write RUN/baseline.tome.onnx again, from the merges it records, when another exporter wrote it. Returns its
    path when it was rewritten; None when there is none or it is current."""
    run_dir = Path(run_dir)
    path = run_dir / BASELINE_FILE
    if not path.is_file():
        return None
    redo = "run the tokengate calibrate command that wrote this run again: it writes the baseline with the run"
    try:
        info = read_info(path)
    except TokenGateError as exc:
        raise fail(f"{path} cannot be read back ({exc.problem})", redo) from None
    if info.exporter == tome_exporter_id():
        return None
    if not info.baseline or "merges" not in info.baseline:
        raise fail(f"{path} records no merge counts to export again", redo)
    cfg = load_run_config(run_dir)
    return export_tome(load_teacher(run_dir, cfg), info.baseline["merges"], cfg, run_dir, path, info.opset)


def check_parity(proto, module: nn.Module, input_shape: Sequence[int], tolerance: float) -> None:
    """ONNX Runtime against PyTorch on a few random images, before anything is written."""
    from pipeline.runtime import import_onnxruntime

    ort = import_onnxruntime()
    images = torch.randn(CHECK_IMAGES, *input_shape, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        expected = module(images).numpy()
    gap = float(np.abs(got - expected).max())
    if not gap <= tolerance:
        raise fail(f"the exported merging baseline differs from PyTorch by {gap:.2e} (tolerance {tolerance:g}, "
                   "validate.tol_vs_torch)", "report it with the run; calibrate with --no-merging meanwhile")

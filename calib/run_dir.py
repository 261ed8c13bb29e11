"""The run directory a calibration writes: the same files `tokengate train` writes, so export/build/validate accept
it unchanged (config.json, teacher.safetensors, student.safetensors, summary.json)."""
from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import read_json, write_json
from pipeline.config import Config
from pipeline.errors import fail
from pipeline.models import GatedViT, save_student, save_teacher
from pipeline.models.build import STUDENT_FILE, TEACHER_FILE


def prepare_out(out: Path, source_run: Path | None) -> list[str]:
    """Refuse to write into the source run or into any run that calibration did not write; returns notes."""
    if source_run is not None and out.resolve() == source_run.resolve():
        raise fail(f"--out {out} is the run being calibrated", "pass a new directory, e.g. --out runs/NAME-calib")
    if not out.exists() or not any(out.iterdir()):
        return []
    summary = out / "summary.json"
    try:
        calibrated = summary.is_file() and "calibration" in read_json(summary)
    except ValueError:
        calibrated = False
    if not calibrated:
        raise fail(f"{out} already holds files that calibration did not write", "pass a new --out directory")
    stale = sorted(p.name for p in out.glob("model.*") if p.is_file())
    return [f"{out} held an earlier calibration; re-export it ({', '.join(stale)} came from the old thresholds)"] \
        if stale else []


def write_run(out: Path, cfg: Config, teacher: GatedViT, student: GatedViT, summary: dict) -> None:
    """config.json and weights first, summary.json last: a summary never describes weights that are not there."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    save_teacher(teacher, out / TEACHER_FILE, cfg)
    save_student(student, out / STUDENT_FILE, cfg)
    write_json(out / "summary.json", summary)

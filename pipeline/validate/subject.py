"""What an artifact is, which config it records, and which PyTorch model is its reference."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.config import Config, load_run_config
from pipeline.errors import fail
from pipeline.runners.factory import artifact_kind


@dataclass(frozen=True)
class Subject:
    artifact: Path
    kind: str  # run | onnx | engine
    flavor: str  # torch | plugin | native | capped | dense
    config: Config  # the config the artifact records (ONNX metadata, or the run's config.json)
    run_dir: Path  # where the PyTorch reference lives
    reference_model: str  # student | teacher (the dense flavor is the teacher)
    caps: Optional[list[int]]  # capped flavor: the reference uses the same static K

    @property
    def batch_invariant(self) -> bool:
        """Group-level dynamic gates decide once per batch, so they cannot promise batch invariance (DESIGN §3)."""
        return self.reference_model == "teacher" or self.config.gates.dynamic != "group"


def describe(artifact: str | Path) -> Subject:
    path = Path(artifact)
    kind = artifact_kind(path)
    if kind == "run":
        run_dir = path if path.is_dir() else path.parent
        model = "teacher" if path.name == "teacher.safetensors" else "student"
        return Subject(path, kind, "torch", load_run_config(run_dir), run_dir, model, None)
    if kind == "onnx":
        return _onnx_subject(path, path)
    from pipeline.build.engine_info import read_info as read_engine_info

    engine = read_engine_info(path)
    onnx_path = Path(engine.onnx["path"])
    if not onnx_path.is_file():
        onnx_path = path.with_name(onnx_path.name)
    return _onnx_subject(onnx_path, path, kind="engine")


def _onnx_subject(onnx_path: Path, artifact: Path, kind: str = "onnx") -> Subject:
    from pipeline.export.metadata import read_info

    info = read_info(onnx_path)  # a file that is not ours fails here: its thresholds and config are unknown
    run_dir = onnx_path.parent if (onnx_path.parent / "config.json").is_file() else Path(info.run_dir)
    if not (run_dir / "config.json").is_file():
        raise fail(f"the run directory of {artifact} (with the PyTorch model to compare with) is not at "
                   f"{onnx_path.parent} nor at {info.run_dir}", "keep exported files inside their run directory")
    return Subject(artifact, kind, info.flavor, info.run_config(), run_dir, info.model,
                   info.caps if info.flavor == "capped" else None)

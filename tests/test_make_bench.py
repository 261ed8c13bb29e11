"""`make bench` runs the real recipe here with PY=echo (set-up taken as done): it never trains (issue 7: minutes on a
fresh machine), benches DeiT-S geometry alone until the default run has a trained student, and adds the run then."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def _make_bench(run: Path) -> list[str]:
    args = ["make", "-s", "-C", str(ROOT), "-o", "setup", "bench", "PY=echo", f"RUN={run}"]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()


def test_fresh_machine_benches_deit_s_without_training(tmp_path):
    lines = _make_bench(tmp_path / "untrained")
    assert not any("pipeline.engine" in line or "train" in line.split() for line in lines), lines
    commands = [line for line in lines if line.startswith("-m pipeline.cli bench")]
    assert len(commands) == 1, lines
    assert commands[0].split()[3:5] == ["configs/deit-s-224.yaml", "--runtime"]
    assert any("make engine" in line and "only DeiT-S" in line for line in lines), lines


def test_trained_default_run_is_benched_too(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "student.safetensors").write_bytes(b"")
    lines = _make_bench(run)
    commands = [line for line in lines if line.startswith("-m pipeline.cli bench")]
    assert len(commands) == 1 and commands[0].split()[3:5] == ["configs/deit-s-224.yaml", str(run)], lines
    assert not any("only DeiT-S" in line for line in lines)

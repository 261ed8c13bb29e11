"""DDP: two torchrun processes on the CPU (Gloo) train the same run that one process would."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import tiny_config


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root, train={"teacher": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
                                          "search": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
                                          "finetune": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
                                          "threads": 1})
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli",
         "train", "--config", str(config), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"teacher", "student", "student_vs_teacher"} <= set(summary)
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    teacher = [r for r in records if r.get("phase") == "teacher" and "step" in r]
    # 512 images, batch 32 per rank, 2 ranks: 8 steps per epoch (a single process would take 16)
    assert max(r["step"] for r in teacher) == 7
    assert teacher[-1]["loss"] < teacher[0]["loss"], "the ranks' averaged gradients still train the model"

"""`tokengate train` end to end on a tiny synthetic dataset: artifacts, reloads, resume, refusals."""
import json

import pytest
import timm
import torch

from pipeline.checkpoints import read_state_dict
from pipeline.errors import TokenGateError
from pipeline.models import load_student, load_teacher
from pipeline.train import trainer
from tests.conftest import tiny_config

RELOAD_TOL = 1e-6


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    cfg, out = tiny_run
    return cfg, out, json.loads((out / "summary.json").read_text())


def test_artifacts_and_summary(trained_run):
    cfg, out, summary = trained_run
    for name in ("teacher.safetensors", "student.safetensors", "config.json", "train_log.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    for model in ("teacher", "student"):
        assert set(summary[model]) >= {"top1", "gflops", "params"}
    assert summary["teacher"]["top1"] > 50.0, "the synthetic task is easy; a trained teacher must learn it"
    assert summary["student"]["params"] < summary["teacher"]["params"], "static gates were sliced out"
    phases = [json.loads(line).get("phase") for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"teacher", "search", "finetune"} <= set(phases)


def test_teacher_is_a_plain_timm_checkpoint(trained_run):
    cfg, out, _ = trained_run
    vit = timm.create_model(cfg.model.arch, pretrained=False, img_size=28, in_chans=1, num_classes=10, patch_size=7,
                            embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)
    vit.load_state_dict(read_state_dict(out / "teacher.safetensors"))  # strict: keys unchanged
    teacher = load_teacher(out)
    images = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(vit.eval()(images), teacher(images), rtol=0, atol=RELOAD_TOL)


def test_student_reloads_without_gates(trained_run):
    _, out, summary = trained_run
    student = load_student(out)
    assert student.static_gates is None
    assert sum(p.numel() for p in student.parameters()) == summary["student"]["params"]


def test_changed_config_is_refused_and_nothing_is_overwritten(trained_run, fmnist_root):
    cfg, out, _ = trained_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    changed = tiny_config(fmnist_root, budget={"target": 0.5})
    with pytest.raises(TokenGateError, match=r"different config \(differs at: budget.target\)"):
        trainer.train(changed, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_resume_continues_from_the_last_epoch(tmp_path, fmnist_root, monkeypatch):
    cfg = tiny_config(fmnist_root, train={"teacher": {"epochs": 2, "batch_size": 64, "warmup_steps": 2},
                                          "search": {"epochs": 0}, "finetune": {"epochs": 0}})
    reference = trainer.train(cfg, tmp_path / "straight")

    real_save = trainer.save_phase

    def save_then_stop(run_dir, phase, model, optimizer, epoch, extra=None):
        real_save(run_dir, phase, model, optimizer, epoch, extra)
        raise KeyboardInterrupt  # the process dies right after the first epoch's checkpoint

    monkeypatch.setattr(trainer, "save_phase", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg, tmp_path / "stopped")
    assert not (tmp_path / "stopped" / "teacher.safetensors").exists()
    monkeypatch.setattr(trainer, "save_phase", real_save)
    resumed = trainer.train(cfg, tmp_path / "stopped")

    log = [json.loads(line) for line in (tmp_path / "stopped" / "train_log.jsonl").read_text().splitlines()]
    assert {"phase": "teacher", "event": "resumed", "epoch": 1}.items() <= next(
        r for r in log if r.get("event") == "resumed").items()
    for a, b in zip(read_state_dict(tmp_path / "straight" / "teacher.safetensors").values(),
                    read_state_dict(tmp_path / "stopped" / "teacher.safetensors").values()):
        torch.testing.assert_close(a, b, rtol=0, atol=RELOAD_TOL)
    assert resumed["teacher"]["top1"] == reference["teacher"]["top1"]

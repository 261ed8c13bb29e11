"""The teacher's logits table: the same values as running the teacher on each training batch, and the same training."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.checkpoints import read_state_dict
from pipeline.data import load_dataset
from pipeline.models import build_teacher
from pipeline.train import teacher_targets as tt
from pipeline.train import trainer
from pipeline.train.distributed import Runtime, gather_interleaved
from tests.conftest import tiny_config

# Each row of the table and of a per-batch forward is the same computation on the same image; only the batch around
# it differs. Float rounding could differ between batch compositions on some backends (none here: CPU gives equal
# bits), so the bound is a few float32 ulps of logits of magnitude ~10.
TABLE_TOL = 1e-5
CPU = Runtime(rank=0, world=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def teacher_and_data(fmnist_root):
    cfg = tiny_config(fmnist_root)
    torch.manual_seed(0)
    return build_teacher(cfg).eval(), load_dataset(cfg.data, cfg.model)


@pytest.mark.parametrize("table_batch", [64, 100, 512])
def test_table_equals_the_teacher_on_shuffled_training_batches(teacher_and_data, table_batch):
    teacher, dataset = teacher_and_data
    targets = tt.teacher_targets(teacher, dataset, table_batch, CPU)
    assert targets.table is not None and targets.table.shape == (len(dataset.train), dataset.num_classes)
    for index in dataset.batch_indices(dataset.train, 32, shuffle=True, seed=3, epoch=1, drop_last=True):
        images, _ = dataset.batch(dataset.train, index)
        with torch.no_grad():
            expected = teacher.forward_dropped(images)[0]
        torch.testing.assert_close(targets(images, index), expected, rtol=0, atol=TABLE_TOL)


def test_without_room_for_the_table_the_teacher_runs_per_batch(teacher_and_data, monkeypatch):
    teacher, dataset = teacher_and_data
    monkeypatch.setattr(tt, "CACHE_LIMIT_BYTES", len(dataset.train) * dataset.num_classes * 4 - 1)
    targets = tt.teacher_targets(teacher, dataset, 64, CPU)
    assert targets.table is None
    index = torch.tensor([5, 1, 300])
    images, _ = dataset.batch(dataset.train, index)
    with torch.no_grad():
        expected = teacher.forward_dropped(images)[0]
    torch.testing.assert_close(targets(images, index), expected, rtol=0, atol=0)


def test_training_with_the_table_matches_per_batch_teacher(tmp_path, fmnist_root, monkeypatch):
    """Same losses at every logged step and the same student weights, to float rounding (TABLE_TOL)."""
    cfg = tiny_config(fmnist_root, train={"teacher": {"epochs": 1, "batch_size": 64, "warmup_steps": 2},
                                          "search": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
                                          "finetune": {"epochs": 1, "batch_size": 64, "warmup_steps": 2}})
    trainer.train(cfg, tmp_path / "table")
    monkeypatch.setattr(tt, "CACHE_LIMIT_BYTES", 0)
    trainer.train(cfg, tmp_path / "per_batch")
    logs = {}
    for name in ("table", "per_batch"):
        records = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        logs[name] = [r for r in records if "step" in r and r["phase"] in ("search", "finetune")]
        assert any(r.get("phase") == "teacher_logits" and r["event"] == name for r in records)
    assert len(logs["table"]) == len(logs["per_batch"]) > 0
    for ours, theirs in zip(logs["table"], logs["per_batch"]):
        assert ours["step"] == theirs["step"]
        for key in ("loss", "ce", "kd", "budget"):
            assert ours[key] == pytest.approx(theirs[key], abs=TABLE_TOL), (ours["phase"], ours["step"], key)
    table, per_batch = (read_state_dict(tmp_path / name / "student.safetensors") for name in ("table", "per_batch"))
    assert table.keys() == per_batch.keys()
    for key in table:
        torch.testing.assert_close(table[key], per_batch[key], rtol=0, atol=TABLE_TOL, msg=key)


def _gather_worker(rank: int, world: int, init_file: str, total: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = torch.arange(total * 2, dtype=torch.float32).reshape(total, 2)
        results[rank] = gather_interleaved(full[rank::world].clone(), total, rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("total", [7, 8])
def test_gather_interleaved_rebuilds_the_rows_on_every_rank(tmp_path, total):
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_worker, args=(world, str(tmp_path / "init"), total, results), nprocs=world)
        expected = torch.arange(total * 2, dtype=torch.float32).reshape(total, 2)
        for rank in range(world):
            torch.testing.assert_close(results[rank], expected, rtol=0, atol=0)

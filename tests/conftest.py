"""Shared fixtures: a synthetic Fashion-MNIST-format dataset and tiny configs that train in seconds."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import Config, config_from_dict

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an idx file (gzipped): the Fashion-MNIST on-disk format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose class is a bright 8x8 square at one of 10 places, on a dark noisy background."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 2 + row * 8: 10 + row * 8, 2 + col * 6: 10 + col * 6] = rng.integers(180, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    for prefix, count, seed in (("train", 512, 1), ("t10k", 200, 2)):
        images, labels = synthetic_images(count, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_config(root: Path, **sections) -> Config:
    """A 4-block ViT on 28x28 inputs with 16 patches; one short epoch per phase."""
    data = {
        "name": "tiny",
        "data": {"root": str(root)},
        "model": {"arch": "vit_tiny_patch16_224", "img_size": 28, "in_chans": 1, "num_classes": 10,
                  "patch_size": 7, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0},
        "gates": {"token_stages": [2, 3], "init_threshold": 0.8, "static_init": 0.3},
        "budget": {"target": 0.6},
        "train": {"teacher": {"epochs": 3, "batch_size": 32, "warmup_steps": 5, "lr": 0.003},
                  "search": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
                  "finetune": {"epochs": 1, "batch_size": 64, "warmup_steps": 2},
                  "eval_batch_size": 64, "threads": 2},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, fmnist_root):
    """A trained tiny run directory (teacher, sliced student, summary), shared by every test that needs one."""
    from pipeline.train import trainer

    out = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(fmnist_root)
    trainer.train(cfg, out)
    return cfg, out


def make_run(out: Path, cfg: Config, sharpen: float = 4.0) -> Path:
    """A run directory with untrained weights (no training): enough for export / validate / bench tests.

    Scaling the q/k weights spreads the random attention, so the token stages really drop tokens.
    """
    from pipeline.artifacts import write_json
    from pipeline.models import build_student, build_teacher, save_student, save_teacher

    torch.manual_seed(0)
    teacher = build_teacher(cfg)
    student = build_student(cfg, weights_from=teacher, static_gates=False)
    with torch.no_grad():
        for block in student.vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= sharpen
        if student.merge_block is not None:  # merge about half of set A: the merge stage really merges
            student.thresholds[0] = merge_median(student, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    save_teacher(teacher, out / "teacher.safetensors", cfg)
    save_student(student, out / "student.safetensors", cfg)
    return out


def merge_median(model, cfg: Config, images: int = 32) -> float:
    """The merge-stage threshold that merges half of the A tokens of the first validation images."""
    from pipeline.data import load_dataset
    from pipeline.models.staged import quantile_threshold
    from pipeline.models.token_ops import bipartite_keep_scores

    data = load_dataset(cfg.data, cfg.model)
    x = model.embed(next(iter(data.batches(data.val, images)))[0])
    for block in model.vit.blocks[:model.merge_block]:
        x = block(x)
    scores = bipartite_keep_scores(x, model.num_prefix)[0]
    return quantile_threshold(scores[torch.isfinite(scores)], 0.5)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, fmnist_root):
    """An untrained tiny run (4 blocks, 16 patches, stages before blocks 2 and 3) whose attention really drops."""
    cfg = tiny_config(fmnist_root)
    return cfg, make_run(tmp_path_factory.mktemp("small_run"), cfg)

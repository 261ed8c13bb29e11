"""`tokengate visualize`: the PNG has one row per image and one column per stage after the input."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.models import load_student
from pipeline.visualize import figure_pixels, kept_patches, stage_titles
from tests.conftest import make_run, tiny_config


def test_visualize_writes_the_grid(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root)  # token stages before blocks 2 and 3
    run = make_run(tmp_path / "run", cfg)
    out = tmp_path / "tokens.png"
    assert main(["visualize", str(run), "--out", str(out), "--images", "3", "--run-root", str(tmp_path / "r")]) == 0
    with Image.open(out) as image:
        assert image.size == figure_pixels(rows=3, cols=1 + 2)


@pytest.mark.parametrize("dropped, merge_block", [("discard", None), ("context", None), ("context", 0)])
def test_kept_patches_match_forward_dropped(tmp_path, fmnist_root, dropped, merge_block):
    cfg = tiny_config(fmnist_root, gates={"dropped_tokens": dropped, "merge_block": merge_block})
    model = load_student(make_run(tmp_path / "run", cfg))
    assert model.dropped_tokens == dropped and model.merge_block == merge_block
    images = torch.randn(5, 1, 28, 28)
    masks = kept_patches(model, images)
    with torch.no_grad():
        lengths = model.forward_dropped(images)[1]
    assert torch.equal(masks.sum(dim=2), lengths - model.num_prefix)
    assert bool((masks[:, 1] <= masks[:, 0]).all())  # a later stage keeps a subset of the earlier one


def test_stage_titles_name_the_merge_stage(tmp_path, fmnist_root):
    cfg = tiny_config(fmnist_root, gates={"dropped_tokens": "context", "merge_block": 0})
    model = load_student(make_run(tmp_path / "run", cfg))
    assert stage_titles(model) == ["merge before block 1", "prune before block 3", "prune before block 4"]

"""The batch-size consistency table: one row per sub-group split variant, top-1 and flip rate per batch size."""
import json

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import TokenGateError
from pipeline.validate.compare import validate
from pipeline.validate.consistency import consistency, split_variants
from tests.conftest import make_run, tiny_config


def _group_run(tmp_path, fmnist_root):
    """A run with two split variants: a batch-independent one (closed routers) and a batch-dependent one."""
    from pipeline.models import build_student, build_teacher, save_student

    cfg = tiny_config(fmnist_root, gates={"dynamic": "group", "static": False,
                                          "subgroup_split": ["recursive", "none"]})
    out = make_run(tmp_path / "group", cfg)
    teacher = build_teacher(cfg)
    for mode, scale in (("recursive", 0.0), ("none", 3.0)):
        student = build_student(cfg, weights_from=teacher, static_gates=False)
        with torch.no_grad():
            for router in student.group_gates.routers:
                router.weight.normal_(0.0, scale) if scale else router.weight.zero_()
                router.bias.fill_(0.0 if scale else 5.0)  # scale 0: every gate open whatever the batch
        save_student(student, out / f"student.split-{mode}.safetensors", cfg)
    return out


def test_variants_side_by_side(tmp_path, fmnist_root, capsys):
    run = _group_run(tmp_path, fmnist_root)
    assert list(split_variants(run)) == ["recursive", "none"]
    report = consistency(run, (1, 2, 8), limit=24)
    assert report["batch_sizes"] == [1, 2, 8] and report["images"] == 24
    steady, moving = report["variants"]["recursive"], report["variants"]["none"]
    assert steady["top1_spread"] == 0.0 and set(steady["flip_rate_vs_b1"].values()) == {0.0}
    direct = validate(run / "student.split-none.safetensors", [8], limit=24, show_progress=False)
    assert moving["top1"]["8"] == pytest.approx(direct["results"]["8"]["top1"], abs=1e-9)
    assert moving["flip_rate_vs_b1"]["8"] == pytest.approx(direct["results"]["8"]["flips_vs_b1"] / 24, abs=1e-12)

    assert main(["validate", str(run), "--splits", "--batch-sizes", "1,8", "--limit", "24",
                 "--json", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "recursive" in printed and "none" in printed and "B=8" in printed
    assert set(json.loads((tmp_path / "c.json").read_text())["variants"]) == {"recursive", "none"}


def test_a_run_without_variants_is_refused(tmp_path, fmnist_root, capsys):
    run = make_run(tmp_path / "plain", tiny_config(fmnist_root))
    with pytest.raises(TokenGateError, match="no sub-group split variants"):
        consistency(run)
    assert main(["validate", str(run), "--splits"]) == 2
    assert "--subgroup-split recursive,none" in capsys.readouterr().err

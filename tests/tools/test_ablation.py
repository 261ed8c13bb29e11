"""The ablation forward: the pipeline's fixed-rate model when it should be, exact fusion of identical tokens, and its
command line."""
import json

import pytest
import torch

from tools.ablation import main as ablation_main
from tools.ablation import RANKINGS, Setting, ablation_forward, check_setting
from calib.baseline import fixed_model
from pipeline.errors import TokenGateError
from pipeline.models import load_student

TOL = 1e-5  # fp32, the same layers with the tokens in another order


@pytest.fixture(scope="module")
def student(small_run):
    cfg, run = small_run
    return load_student(run, cfg).eval()


def _forward(model, images, setting):
    return ablation_forward(model, images, setting, torch.Generator().manual_seed(0))


def test_attention_ranking_equals_the_fixed_rate_model(student):
    images = torch.randn(12, 1, 28, 28)
    for counts in [(9, 5), (4, 1), (16, 16)]:
        with torch.no_grad():
            reference, kept = fixed_model(student, counts).forward_dropped(images)
        assert kept[:, 0].eq(1 + counts[0]).all()
        logits = _forward(student, images, Setting(counts))
        assert (logits - reference).abs().max() <= TOL, counts


def test_every_setting_is_dense_when_nothing_is_dropped(student):
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        dense = fixed_model(student, (16, 16)).forward_dropped(images)[0]
    for setting in [Setting((16, 16), r) for r in RANKINGS] + [Setting((16, 16), fuse=True)]:
        assert (_forward(student, images, setting) - dense).abs().max() <= TOL, setting


def test_rankings_keep_different_tokens(student):
    images = torch.randn(12, 1, 28, 28)
    base = _forward(student, images, Setting((6, 3)))
    for ranking in ("inverse", "random"):
        assert (_forward(student, images, Setting((6, 3), ranking)) - base).abs().max() > 1e-3, ranking


def test_fusing_identical_tokens_is_exact(student):
    """Identical patch tokens stay identical through every block; a fused row standing for m of them, with the
    log(m) attention bias, draws exactly their attention, so dropping into a fused token changes nothing. Plain
    pruning does change the class token's attention."""
    import copy

    model = copy.deepcopy(student)
    with torch.no_grad():
        model.vit.pos_embed[:, 1:] = model.vit.pos_embed[:, 1:2]  # every patch position the same
    images = torch.full((3, 1, 28, 28), 0.5) + torch.arange(3.0)[:, None, None, None]  # flat images
    dense = _forward(model, images, Setting((16, 16)))
    assert (_forward(model, images, Setting((5, 2), fuse=True)) - dense).abs().max() <= TOL
    assert (_forward(model, images, Setting((5, 2))) - dense).abs().max() > 1e-4


def test_bad_counts_and_ranking_are_refused(student):
    for setting in [Setting((5,)), Setting((0, 3)), Setting((17, 3)), Setting((5, 3), "entropy")]:
        with pytest.raises(TokenGateError):
            check_setting(student, setting)


def test_command_line_writes_the_table(small_run, tmp_path, capsys):
    _, run = small_run
    out = tmp_path / "ablation.json"
    assert ablation_main([str(run), "--counts", "8,4", "--set", "data.val_limit=40", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["ranking"], r["fuse"]) for r in rows] == [(r, False) for r in RANKINGS] + [("attention", True)]
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows)
    assert "| 8,4 | inverse | no |" in capsys.readouterr().out
    assert ablation_main([str(run), "--counts", "8,x"]) == 2

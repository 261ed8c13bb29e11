"""Threshold calibration: the staged forward equals the deployed one, and the search meets its budget."""
import pytest
import torch

from calib.cost import cost_ratio, floor_ratio, reference_macs
from calib.inputs import model_inputs
from calib.search import ThresholdSearch, fidelity_to_dense, neighbours, simplex_grid
from pipeline.models.staged import MIN_GAP, quantile_threshold
from pipeline.models.staged import StagedForward
from pipeline.data import load_dataset
from pipeline.errors import TokenGateError
from pipeline.models import build_student, load_teacher

BUDGET_TOL = 0.02  # issue 6: the calibrated mean GFLOPs within 2% of the budget


@pytest.fixture(scope="module")
def setup(small_run, calib_set):
    cfg, run = small_run
    teacher = load_teacher(run, cfg)
    data = load_dataset(cfg.data, cfg.model)
    images = model_inputs(calib_set, 1, 28, data.mean, data.std)
    with torch.no_grad():
        dense = teacher.forward_dropped(images)[0]
    student = build_student(cfg, weights_from=teacher, static_gates=False).eval()
    with torch.no_grad():  # as make_run does for its student: sharper attention, so thresholds matter
        for block in student.vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4.0
    return student, images, dense, reference_macs(teacher)


def test_quantile_threshold_keeps_the_asked_share():
    scores = torch.tensor([0.1, 0.5, 0.9, 1.3, 2.0])
    assert quantile_threshold(scores, 0.4) == pytest.approx(1.1)  # midway between the 2nd kept and the 1st dropped
    assert int((scores > quantile_threshold(scores, 0.6)).sum()) == 3
    assert quantile_threshold(scores, 1.0) == pytest.approx(0.1 - 1.0)  # below every score: all pass
    assert int((scores > quantile_threshold(scores, 0.0)).sum()) == 0
    assert quantile_threshold(torch.tensor([]), 0.5) == 0.0


def test_quantile_threshold_never_cuts_between_tied_scores():
    """Tied (or nearly tied, under MIN_GAP) scores fall on one side: float rounding would decide them otherwise,
    differently in each runtime. The cut moves to the nearest gap, keeping more on a tie."""
    scores = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0, 1.0 + MIN_GAP / 10, 0.0])
    threshold = quantile_threshold(scores, 3 / 7)  # the cut would fall inside the block of four near-1.0 scores
    assert threshold == pytest.approx(1.5, abs=1e-5) and int((scores > threshold).sum()) == 2
    assert int((scores > quantile_threshold(scores, 5 / 7)).sum()) == 6  # nearer the cut below the block
    assert int((scores > quantile_threshold(scores, 4 / 7)).sum()) == 6  # equally near both: keep more
    equal = torch.ones(5)
    assert int((equal > quantile_threshold(equal, 0.6)).sum()) == 5 and \
        int((equal > quantile_threshold(equal, 0.2)).sum()) == 0


def test_fidelity_to_dense_is_kl_and_top1_agreement():
    dense = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert fidelity_to_dense(dense.clone(), dense) == (pytest.approx(0.0, abs=1e-12), 1.0)
    model = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # the second image's top-1 moves
    p, q = dense[1].double().softmax(-1), model[1].double().softmax(-1)
    kl, agreement = fidelity_to_dense(model, dense)
    assert agreement == 0.5
    assert kl == pytest.approx(float((p * (p / q).log()).sum()) / 2, rel=1e-9)  # KL(dense || model), per image


def test_profile_grid_covers_the_simplex():
    grid = simplex_grid(3, 4)
    assert len(grid) == 15 and all(sum(p) == pytest.approx(1.0) for p in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.0, 0.0, 1.0) in grid
    near = neighbours((0.5, 0.5, 0.0), 8)
    assert (0.5, 0.5, 0.0) not in near and all(max(abs(a - b) for a, b in zip(p, (0.5, 0.5, 0.0))) <= 0.125 + 1e-9
                                               for p in near)


@pytest.fixture(params=["discard", "context"])
def modal(setup, request):
    """The setup's student with each `dropped_tokens` mode (restored afterwards: the fixture is shared)."""
    student = setup[0]
    student.dropped_tokens = request.param
    yield setup
    student.dropped_tokens = "discard"


def test_staged_forward_equals_forward_dropped(modal):
    student, images, _, _ = modal
    thresholds = (0.9, 1.1)
    staged = StagedForward(student, images, batch_size=16).run(lambda s, pooled: thresholds[s])
    with torch.no_grad():
        student.thresholds.copy_(torch.tensor(thresholds))
        logits, lengths = student.forward_dropped(images)
    assert torch.equal(staged.lengths, lengths)
    assert torch.allclose(staged.logits, logits, atol=1e-5), "batch composition differs: 1e-5 as DESIGN.md §3"
    assert 1 < float(lengths[:, -1].float().mean()) < 17, "the thresholds really drop tokens"


@pytest.mark.parametrize("budget", [0.7, 0.85])
def test_search_meets_the_budget_as_deployed(modal, budget):
    student, images, dense, reference = modal
    result = ThresholdSearch(student, images, dense, reference).search(budget, steps=3, progress=False)
    best = result.best
    assert best.ratio <= budget and abs(best.ratio - budget) <= BUDGET_TOL * budget, best
    assert best.kl == min(t.kl for t in result.trials)
    with torch.no_grad():
        student.thresholds.copy_(torch.tensor(best.thresholds))
        lengths = student.forward_dropped(images)[1]
    assert cost_ratio(student, lengths, reference) == pytest.approx(best.ratio, abs=1e-9)


@pytest.mark.parametrize("budget, words", [(0.0, "outside (0, 1]"), (1.5, "outside (0, 1]"), (-0.2, "outside (0, 1]"),
                                           (0.3, "cost that no threshold removes")])
def test_unreachable_budgets_are_refused(setup, budget, words):
    student, images, dense, reference = setup
    assert floor_ratio(student, reference) > 0.3  # blocks 0-1 of 4 always see every token
    with pytest.raises(TokenGateError, match="Fix:") as err:
        ThresholdSearch(student, images, dense, reference).search(budget, progress=False)
    assert words in str(err.value)

"""The ToMe-style merging baseline: the merge itself, proportional attention, its MACs counted from what really runs
(the same per-layer formulas as ours), top-1 computed as `pipeline.evaluate` computes ours, and the budget search."""
import pytest
import torch
from torch import nn

from calib.cost import reference_macs
from calib.inputs import model_inputs
from calib.report import print_calibration
from calib.tome import bipartite_merge, block_tokens, evaluate_tome, merge_macs, tome_forward, tome_macs
from calib.tome_search import MergeSearch
from pipeline.artifacts import read_json
from pipeline.data import load_dataset
from pipeline.errors import TokenGateError
from pipeline.evaluate import evaluate
from pipeline.flops import dense_macs
from pipeline.models import load_teacher

FLOAT_TOL = 1e-5  # fp32 rounding of the same computation in another order


@pytest.fixture(scope="module")
def setup(small_run, calib_set):
    cfg, run = small_run
    teacher = load_teacher(run, cfg).eval()
    data = load_dataset(cfg.data, cfg.model)
    images = model_inputs(calib_set, 1, 28, data.mean, data.std)
    with torch.no_grad():
        dense = teacher.forward_dropped(images)[0]
    return teacher, data, images, dense


def test_merge_keeps_prefix_and_conserves_size_weighted_sums():
    torch.manual_seed(1)
    x, metric = torch.randn(3, 12, 8), torch.randn(3, 12, 5)
    size = torch.randint(1, 4, (3, 12)).float()
    merged, sizes = bipartite_merge(x, size, metric, 4, num_prefix=2)
    assert merged.shape == (3, 8, 8) and sizes.shape == (3, 8)
    assert torch.equal(merged[:, :2], x[:, :2]) and torch.equal(sizes[:, :2], size[:, :2]), "prefix never merged"
    assert torch.equal(sizes.sum(1), size.sum(1)), "every input token is still stood for once"
    weighted = (x * size[..., None]).sum(1)
    assert torch.allclose((merged * sizes[..., None]).sum(1), weighted, atol=FLOAT_TOL), \
        "merges are size-weighted means"


def test_merge_pairs_the_most_similar_tokens():
    """A token whose key equals its B partner's merges first; the merged row is the size-weighted mean."""
    torch.manual_seed(0)
    metric = torch.randn(1, 7, 4)
    metric[0, 3] = metric[0, 6]  # patch 2 (set A) and patch 5 (set B), prefix 1
    x, size = torch.randn(1, 7, 3), torch.tensor([[1.0, 1, 1, 1, 1, 1, 3]])
    merged, sizes = bipartite_merge(x, size, metric, 1, num_prefix=1)
    a_left = [1, 5]  # patches 0 and 4 (A, in order), then B: patches 1, 3, 5
    assert torch.equal(merged[0, 1:3], x[0, a_left])
    assert torch.allclose(merged[0, -1], (x[0, 3] + 3 * x[0, 6]) / 4, atol=FLOAT_TOL)
    assert sizes[0].tolist() == [1, 1, 1, 1, 1, 4]


def test_proportional_attention_makes_merging_duplicates_lossless(setup):
    """Two identical rows attended to, or one row of size 2 with log 2 added to its logits: the same outputs."""
    teacher = setup[0]
    attn = teacher.vit.blocks[1].attn
    x = torch.randn(2, 6, teacher.vit.embed_dim)
    twice = torch.cat([x, x[:, 4:5]], dim=1)
    bias = torch.zeros(2, 1, 1, 6)
    bias[..., 4] = torch.log(torch.tensor(2.0))
    with torch.no_grad():
        assert torch.allclose(attn(twice)[:, :6], attn(x, attn_mask=bias), atol=FLOAT_TOL)


def test_no_merges_is_the_dense_model_in_top1_and_gflops(setup):
    teacher, data, images, dense = setup
    zeros = [0] * len(teacher.vit.blocks)
    assert torch.allclose(tome_forward(teacher, images, zeros), dense, atol=FLOAT_TOL)
    assert tome_macs(teacher.geometry(), zeros) == dense_macs(teacher.geometry()) == reference_macs(teacher)
    ours, merging = evaluate(teacher, data, data.val, 64, show_progress=False), \
        evaluate_tome(teacher, data, data.val, zeros, 64, show_progress=False)
    assert merging.top1 == ours.top1 and merging.images == ours.images == len(data.val)
    assert merging.gflops == pytest.approx(ours.gflops, rel=1e-12) and merging.params == ours.params


def _counted_macs(model, images, merges) -> int:
    """MACs of what actually runs, from hooks: every Linear and the patch Conv2d at the rows they get, QK^T and AV at
    the tokens each attention gets, plus the matching of each merging block."""
    total, hooks = [0], []

    def linear(module, inputs, _out):
        total[0] += inputs[0].numel() // module.in_features // len(images) * module.in_features * module.out_features

    def conv(module, _inputs, out):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += out.shape[2] * out.shape[3] * module.in_channels * k * module.out_channels

    def attention(module, inputs):
        tokens = inputs[0].shape[1]
        total[0] += 2 * tokens * tokens * module.num_heads * module.head_dim

    for m in model.vit.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
    hooks += [b.attn.register_forward_pre_hook(attention) for b in model.vit.blocks]
    try:
        tome_forward(model, images, merges)
    finally:
        for h in hooks:
            h.remove()
    geom = model.geometry()
    for (tokens, _), r in zip(block_tokens(geom, merges), merges):
        if r:
            total[0] += merge_macs(tokens - geom.num_prefix, geom.embed_dim, geom.head_dim)
    return total[0]


@pytest.mark.parametrize("merges", [(0, 0, 0, 0), (3, 2, 0, 5), (8, 4, 2, 1)])
def test_macs_are_what_runs_by_our_formulas(setup, merges):
    teacher, _, images, _ = setup
    assert tome_macs(teacher.geometry(), merges) == _counted_macs(teacher, images[:5], merges)


def test_matching_costs_the_similarity_matrix():
    """|A| x |B| cosine similarities of head_dim keys, plus the head mean and the weighted sums (2 * n * C)."""
    assert merge_macs(49, 64, 16) == 25 * 24 * 16 + 2 * 49 * 64
    assert merge_macs(16, 32, 16) == 8 * 8 * 16 + 2 * 16 * 32


def test_bad_merge_counts(setup):
    teacher, _, images, _ = setup
    with pytest.raises(TokenGateError, match="one count per block"):
        tome_forward(teacher, images, [1, 1])
    with pytest.raises(TokenGateError, match="merge between 0 and 4"):
        tome_forward(teacher, images, [8, 5, 0, 0])  # 8 patches left after block 0


@pytest.mark.parametrize("target", [0.6, 0.8])
def test_search_meets_the_budget_at_the_lowest_kl(setup, target):
    teacher, _, images, dense = setup
    search = MergeSearch(teacher, images, dense, reference_macs(teacher))
    result = search.search(target, max_forwards=40, progress=False)
    best = result.best
    assert best.ratio <= target and best.ratio == tome_macs(teacher.geometry(), best.merges) / reference_macs(teacher)
    assert target - best.ratio < 0.02, "the budget's slack is handed back (one merge is under 2% of dense here)"
    assert all(best.kl <= seed.kl for seed in result.seeds.values())
    assert result.forwards <= 40
    constant, r = result.constant, max(result.constant.merges)
    assert constant.merges == search.scheduled((1.0,) * 4, r), "one count for every block, capped where it must be"
    assert constant.ratio <= target < search.ratio(search.scheduled((1.0,) * 4, r - 1)), "the fewest within budget"
    logits = tome_forward(teacher, images, best.merges)
    assert (logits.argmax(-1) == dense.argmax(-1)).double().mean().item() == pytest.approx(best.agreement, abs=1e-12)


def test_search_below_the_merging_floor_returns_none(setup):
    teacher, _, images, dense = setup
    assert MergeSearch(teacher, images, dense, reference_macs(teacher)).search(0.05, progress=False) is None


def test_calibrate_reports_the_merging_baseline(calibrated_run, capsys):
    out, _ = calibrated_run
    summary = read_json(out / "summary.json")
    for row in summary["calibration"]["sweep"]:
        merging = row["merging"]
        assert merging["gflops_ratio"] <= row["gflops_ratio"] + 1e-9, "at most the calibrated model's GFLOPs"
        assert merging["gflops_ratio"] == pytest.approx(merging["calib_gflops_ratio"], abs=1e-12), \
            "merging costs the same on any data"
        assert 0 <= merging["top1"] <= 100 and row["merging_constant"]["top1"] >= 0
    print_calibration(summary)
    printed = capsys.readouterr().out
    for row in summary["calibration"]["sweep"]:  # headers wrap; the cells do not
        merging = row["merging"]
        assert f"{merging['top1']:.2f} @ {merging['gflops_ratio']:.3f}" in printed
        assert ",".join(map(str, merging["merges"])) in printed


def test_merging_baseline_exports_with_its_cost_and_runs_in_onnxruntime(setup, small_run, tmp_path):
    """The ONNX file of the baseline: PyTorch's logits (validate.tol_vs_torch) at any batch size, ties broken the
    same way (identical rows merge alike), its merges and MACs in the metadata, the same graph passes as a flavor."""
    import numpy as np
    import onnxruntime as ort

    from calib.tome_export import export_tome
    from pipeline.export.metadata import read_info

    teacher, _, images, _ = setup
    cfg, run = small_run
    merges = [4, 2, 1, 0]
    tied = images[:8].clone()
    tied[:, :, :14] = tied[:1, :, :14]  # patches with equal content: similarities tie exactly
    path = export_tome(teacher, merges, cfg, run, tmp_path / "tome.onnx")
    info = read_info(path)
    assert info.flavor == "tome" and info.model == "teacher" and info.baseline["merges"] == merges
    assert info.baseline["macs"] == tome_macs(teacher.geometry(), merges)
    assert set(info.passes) == {"fold_weights", "bias_gemm"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images[:7], tied):
        got = session.run(None, {"images": batch.numpy()})[0]
        assert np.abs(got - tome_forward(teacher, batch, merges).numpy()).max() <= cfg.validate.tol_vs_torch


def test_bench_times_a_baseline_file_and_refuses_other_files(small_run, tmp_path):
    from pipeline.bench.run import baseline_files

    _, run = small_run
    with pytest.raises(TokenGateError, match="does not exist"):
        baseline_files(run, "ort-cpu", ["baseline.tome.onnx"])
    with pytest.raises(TokenGateError, match="ONNX Runtime only"):
        baseline_files(run, "torch", ["baseline.tome.onnx"])

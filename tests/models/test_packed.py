"""The packed layout: same logits and kept tokens as forward_dropped, batch invariant, exact gathers."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from pipeline.export.batch_one import branch_model
from pipeline.export.metadata import ExportInfo
from pipeline.export.onnx_export import export_onnx
from pipeline.models.packed import MASK_BIAS, PackedForward, keep_mask, layout_from_lengths
from pipeline.errors import TokenGateError
from pipeline.models import GatedViT, Structure, build_teacher, token_ops
from tests.conftest import tiny_config

TOL = 1e-5  # fp32, the same ops in another order


def test_layout_round_trip():
    lengths = torch.tensor([3, 1, 2])
    layout = layout_from_lengths(lengths, 3)
    assert layout.flat.tolist() == [0, 1, 2, 3, 6, 7]  # positions b * 3 + j of the valid tokens
    rows = torch.arange(6, dtype=torch.float32)[:, None].expand(6, 2)
    padded = rows[layout.index].reshape(3, -1, 2)  # the per-sample view, as the attention gathers it
    assert padded[:, :, 0].tolist() == [[0, 1, 2], [3, 3, 3], [4, 5, 4]]  # padding repeats the sample's first row
    assert layout.bias[:, 0].tolist() == [[0, 0, 0], [0, MASK_BIAS, MASK_BIAS], [0, 0, MASK_BIAS]]
    assert torch.equal(padded.reshape(-1, 2)[layout.flat], rows)  # and back to the packed rows


@pytest.fixture(scope="module")
def sliced_gated(fmnist_root):
    cfg = tiny_config(fmnist_root, model={"depth": 4, "num_heads": 2, "embed_dim": 32})
    teacher = build_teacher(cfg)
    vit = copy.deepcopy(teacher.vit)
    with torch.no_grad():
        for block in vit.blocks:  # spread attention so the stages drop different counts per sample
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4
    Structure(heads=(2, 1, 2, 1), mlp_hidden=(40, 64, 0, 30)).apply(vit)  # one MLP removed entirely
    return GatedViT(vit, stages=(1, 3), init_threshold=1.0).eval()


def with_context(model: GatedViT) -> GatedViT:
    """The same network and thresholds, keeping dropped tokens as context."""
    out = GatedViT(copy.deepcopy(model.vit), stages=model.stages, dropped_tokens="context").eval()
    out.thresholds.data.copy_(model.thresholds.data)
    return out


def test_keep_mask_argmax_top_up_equals_the_ranking():
    scores = torch.tensor([[0.2, 0.9, 0.9, -float("inf")], [float("nan"), 0.1, 0.3, 0.3],
                           [-float("inf"), -float("inf"), 0.5, 0.5], [float("nan")] * 4])
    for threshold in (0.0, 0.4, 2.0):  # nothing passes at 2.0: the top-up alone decides (ties -> lower index)
        theta = torch.tensor(threshold)
        assert torch.equal(keep_mask(scores, theta, 1), token_ops.keep_mask(scores, theta, 1))
    assert torch.equal(keep_mask(scores, torch.tensor(2.0), 2), token_ops.keep_mask(scores, torch.tensor(2.0), 2))


@pytest.mark.parametrize("varlen", [True, False])
@pytest.mark.parametrize("dropped", ["discard", "context"])
def test_packed_equals_forward_dropped(sliced_gated, varlen, dropped):
    """Context mode: each sample's context rows are its own dropped tokens, as GatedViT's padded context holds."""
    model = sliced_gated if dropped == "discard" else with_context(sliced_gated)
    images = torch.randn(9, 1, 28, 28)
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
        packed_logits, packed_kept = PackedForward(model, varlen)(images)
        singles = torch.cat([PackedForward(model, varlen)(images[i:i + 1])[0] for i in range(9)])
        batch_one = [PackedForward(model, batch_one=True)(images[i:i + 1]) for i in range(9)]
    assert kept.float().std(0).max() > 0  # samples keep different counts, so there is padding to remove
    assert torch.equal(packed_kept, kept)
    assert (packed_logits - logits).abs().max() <= TOL
    assert (singles - packed_logits).abs().max() <= TOL  # batch invariance
    # the batch-one forward (no layout, no gathers, no masks): the same tokens and logits, image by image
    assert torch.equal(torch.cat([k for _, k in batch_one]), kept)
    assert (torch.cat([out for out, _ in batch_one]) - singles).abs().max() <= TOL
    if dropped == "context":  # the context really is read: without it the logits move
        with torch.no_grad():
            assert (sliced_gated.forward_dropped(images)[0] - logits).abs().max() > 1e-3


def test_context_that_starts_empty_and_grows(sliced_gated):
    """A first stage that drops nothing leaves every sample an empty context; the second stage fills it."""
    model = with_context(sliced_gated)
    with torch.no_grad():
        model.thresholds[0] = -1.0  # relative scores are positive: every patch passes
    images = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
        packed_logits, packed_kept = PackedForward(model, varlen=True)(images)
    assert (kept[:, 0] == 17).all() and (kept[:, 1] < 17).any()
    assert torch.equal(packed_kept, kept)
    assert (packed_logits - logits).abs().max() <= TOL
    with torch.no_grad():  # the batch-one forward grows its context the same way
        batch_one = [PackedForward(model, batch_one=True)(images[i:i + 1]) for i in range(5)]
    assert torch.equal(torch.cat([k for _, k in batch_one]), kept)
    assert (torch.cat([out for out, _ in batch_one]) - logits).abs().max() <= TOL


def test_batch_one_forward_refuses_larger_batches(sliced_gated):
    with pytest.raises(ValueError, match="batches of one image, not 2"):
        PackedForward(sliced_gated, batch_one=True)(torch.randn(2, 1, 28, 28))


def test_class_attention_key_bias_matches_the_mask():
    """The packed layout scores with an additive MASK_BIAS where the padded layout masks: same weights to 1e-6."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=gen) for shape in ((2, 3, 8), (2, 3, 5, 8), (2, 3, 5, 8)))
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    bias = torch.where(valid, 0.0, MASK_BIAS)[:, None, :]
    masked, masked_out = token_ops.class_attention(q, k, v, 0.35, valid)
    biased, biased_out = token_ops.class_attention(q, k, v, 0.35, None, key_bias=bias)
    torch.testing.assert_close(biased, masked, rtol=0, atol=1e-6)
    torch.testing.assert_close(biased_out, masked_out, rtol=0, atol=1e-6)
    assert float(biased[1, :, 3:].max()) < 1e-12  # padded keys get a negligible weight, not an exact zero


LONG = {"depth": 4, "num_heads": 2, "embed_dim": 32, "img_size": 48, "patch_size": 4}  # 144 patches + class


@pytest.fixture(scope="module")
def long_gated(fmnist_root):
    """Like `sliced_gated`, with 145 tokens: long enough that the export attends sample by sample."""
    cfg = tiny_config(fmnist_root, model=LONG)
    vit = copy.deepcopy(build_teacher(cfg).vit)
    with torch.no_grad():
        for block in vit.blocks:
            block.attn.qkv.weight[: 2 * block.attn.attn_dim] *= 4
    Structure(heads=(2, 1, 2, 1), mlp_hidden=(40, 64, 0, 30)).apply(vit)
    return cfg, GatedViT(vit, stages=(1, 3), init_threshold=1.0).eval()


@pytest.mark.parametrize("dropped", ["discard", "context"])
def test_packed_export_attends_per_sample(long_gated, tmp_path, dropped):
    """The exported packed graph: one If (batched attention when all samples keep as many tokens, else a Loop over
    the samples) per attention that does not score (blocks 1 and 3 of 4: blocks 0 and 2 score the stages), no
    placeholder left, the passes recorded, same logits and kept tokens as forward_dropped, batch invariant (batch 1
    takes the batched branch, batch 9 the loop); and the recorded selection leaves the attention out (its branches
    read qkv, which an If does not list among its inputs; read as inputs-only, it would count as selection)."""
    from pipeline.export.metadata import read_info
    from pipeline.export.varlen import placeholders_left
    from pipeline.runners.ort_runner import OrtRunner

    cfg, model = long_gated
    model = model if dropped == "discard" else with_context(model)
    path = export_onnx(model, "packed", tmp_path / "model.packed.onnx", ExportInfo.of(model, cfg, "packed", tmp_path, 20))
    graph = branch_model(onnx.load(str(path), load_external_data=False), batch=9)  # the batched graph
    attention = [n for n in graph.graph.node if n.op_type == "If"]
    assert len(attention) == 2
    assert all([x.op_type for x in a.g.node].count("Loop") == 1 for n in attention for a in n.attribute
               if a.name == "else_branch")
    assert placeholders_left(onnx.load(str(path))) == 0
    info = read_info(path)
    assert info.passes["varlen"] == 2 and info.passes["bias_gemm"] > 0 and "fold_weights" in info.passes
    recorded = set(info.selection["select"]) | set(info.selection["scores"])
    assert sum(n.op_type == "Greater" for n in graph.graph.node if n.name in recorded) >= 2  # both stages' decisions
    # the If's condition (3 nodes on the lengths) may count as selection, like the rest of the layout's bookkeeping
    assert not {n.name for n in attention} & recorded
    runner = OrtRunner(path, threads=1)
    images = torch.randn(9, 1, 48, 48)
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
    out = runner.infer(images.numpy())
    singles = np.concatenate([runner.infer(images[i:i + 1].numpy()).logits for i in range(9)])
    assert np.array_equal(out.kept_tokens, kept.numpy())
    assert (out.kept_tokens.min(0) != out.kept_tokens.max(0)).all()  # counts differ at both stages: the loop
    assert np.abs(out.logits - logits.numpy()).max() <= TOL
    assert np.abs(singles - out.logits).max() <= TOL  # batch invariance


def test_packed_export_refuses_half_precision(sliced_gated, fmnist_root, tmp_path):
    cfg = tiny_config(fmnist_root, model={"depth": 4, "num_heads": 2, "embed_dim": 32})
    half = copy.deepcopy(sliced_gated).half()
    with pytest.raises(TokenGateError, match="float32"):
        export_onnx(half, "packed", tmp_path / "model.packed.onnx", ExportInfo.of(half, cfg, "packed", tmp_path, 20))
    assert not list(tmp_path.glob("*.onnx"))


def test_per_sample_attention_is_chosen_for_long_sequences(sliced_gated, long_gated):
    """17 tokens (4 x 4 patches of 7 + class): padded attention; 145 (12 x 12 patches of 4 + class): per sample."""
    from pipeline.models.packed import per_sample_attention_pays

    assert not per_sample_attention_pays(sliced_gated)
    assert per_sample_attention_pays(long_gated[1])


def test_final_context_stage_only_removes_queries(sliced_gated, fmnist_root, tmp_path):
    """A context stage before the last block leaves every token a key of that block and nothing reads the dropped
    tokens' outputs: the export gathers the query rows and builds no context (no row order, key order or key
    layout, each of which costs a NonZero), so it has as many NonZero nodes as the same stage discarding; the
    logits equal forward_dropped's and are batch invariant."""
    cfg = tiny_config(fmnist_root, model={"depth": 4, "num_heads": 2, "embed_dim": 32})
    counts = {}
    for dropped in ("discard", "context"):
        model = GatedViT(copy.deepcopy(sliced_gated.vit), stages=(3,), init_threshold=1.0,
                         dropped_tokens=dropped).eval()
        path = export_onnx(model, "packed", tmp_path / f"{dropped}.onnx",
                           ExportInfo.of(model, cfg, "packed", tmp_path, 20))
        for batch in (1, 2):
            graph = branch_model(onnx.load(str(path)), batch).graph
            counts[dropped, batch] = sum(n.op_type == "NonZero" for n in graph.node)
    assert counts["context", 2] == counts["discard", 2] == 2  # the kept rows and the layout's flat positions
    assert counts["context", 1] == counts["discard", 1] == 1  # batch one: the kept rows, no layout
    images = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, kept = model.forward_dropped(images)
        packed_logits, packed_kept = PackedForward(model)(images)
        singles = torch.cat([PackedForward(model)(images[i:i + 1])[0] for i in range(6)])
        batch_one = [PackedForward(model, batch_one=True)(images[i:i + 1]) for i in range(6)]
    assert (kept[:, 0] < 16).all() and kept.float().std() > 0
    assert torch.equal(packed_kept, kept)
    assert (packed_logits - logits).abs().max() <= TOL
    assert (singles - packed_logits).abs().max() <= TOL
    assert torch.equal(torch.cat([k for _, k in batch_one]), kept)  # the only stage, at batch one
    assert (torch.cat([out for out, _ in batch_one]) - logits).abs().max() <= TOL

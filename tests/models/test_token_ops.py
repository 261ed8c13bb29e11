"""The pure token algorithms against hand-computed values (tolerances stated per assert)."""
import math

import pytest
import torch

from pipeline.models import token_ops

EXACT = dict(rtol=0.0, atol=0.0)


def _hand_example():
    """B=1, H=2, N=4 (class token + 3 patches), d=2, scale=1.

    Head 0 attends with weights [1, 1, 2, 4] / 8 and outputs [3, 4] (norm 5); head 1 attends uniformly and
    outputs [0, 1] (norm 1). Head weights are therefore [5/6, 1/6].
    """
    q_cls = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    k = torch.zeros(1, 2, 4, 2)
    k[0, 0, :, 0] = torch.tensor([0.0, 0.0, math.log(2), math.log(4)])
    v = torch.zeros(1, 2, 4, 2)
    v[0, 0] = torch.tensor([3.0, 4.0])
    v[0, 1] = torch.tensor([0.0, 1.0])
    return q_cls, k, v


def test_scores_match_hand_computed_example():
    q_cls, k, v = _hand_example()
    attn, head_out = token_ops.class_attention(q_cls, k, v, scale=1.0, key_valid=None)
    torch.testing.assert_close(attn[0, 0], torch.tensor([1, 1, 2, 4]) / 8.0, rtol=0, atol=1e-7)
    torch.testing.assert_close(head_out[0], torch.tensor([[3.0, 4.0], [0.0, 1.0]]), rtol=0, atol=1e-6)
    weights = token_ops.head_importance(head_out)
    torch.testing.assert_close(weights[0], torch.tensor([5 / 6, 1 / 6]), rtol=0, atol=1e-7)
    scores = token_ops.token_scores(attn, weights, num_prefix=1, key_valid=None)
    # raw patch scores 5/6*[1,2,4]/8 + 1/6*[1,1,1]/4 = [7, 12, 22]/48; relative to their mean (41/144)
    torch.testing.assert_close(scores[0], torch.tensor([21.0, 36.0, 66.0]) / 41.0, rtol=0, atol=1e-6)


def test_scores_mask_invalid_keys_and_closed_heads():
    q_cls, k, v = _hand_example()
    valid = torch.tensor([[True, True, True, False]])
    attn, head_out = token_ops.class_attention(q_cls, k, v, 1.0, valid)
    assert attn[0, :, 3].abs().max() == 0  # exact: masked keys get no attention
    weights = token_ops.head_importance(head_out, head_gate=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(weights[0], torch.tensor([0.0, 1.0]), **EXACT)
    scores = token_ops.token_scores(attn, weights, 1, valid)
    assert scores[0, 2] == float("-inf")
    torch.testing.assert_close(scores[0, :2], torch.tensor([1.0, 1.0]), rtol=0, atol=1e-6)  # head 1 is uniform


def test_keep_mask_threshold_is_strict_and_min_keep_breaks_ties_by_index():
    scores = torch.tensor([[0.5, 1.2, 1.2, 0.9]])
    assert token_ops.keep_mask(scores, 1.0, 1).tolist() == [[False, True, True, False]]
    assert token_ops.keep_mask(scores, 1.2, 1).tolist() == [[False, True, False, False]]
    assert token_ops.keep_mask(scores, 1.2, 2).tolist() == [[False, True, True, False]]
    assert token_ops.keep_mask(scores, 5.0, 3).tolist() == [[False, True, True, True]]


def test_keep_mask_never_picks_nan_or_padding_over_real_tokens():
    scores = torch.tensor([[float("nan"), 0.1, float("-inf"), 0.2]])
    assert token_ops.keep_mask(scores, 0.15, 1).tolist() == [[False, False, False, True]]
    assert token_ops.keep_mask(scores, 9.0, 2).tolist() == [[False, True, False, True]]


def test_reference_select_compacts_in_order_and_pads_with_zeros():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2) + 1
    scores = torch.tensor([[0.1, 2.0, 0.3, 3.0], [5.0, 5.0, 5.0, 5.0]])
    y, lengths = token_ops.token_select_reference(x, scores, torch.tensor(1.0), num_prefix=1, min_keep=1)
    assert lengths.dtype == torch.int32 and lengths.tolist() == [3, 5]
    assert y.shape == (2, 5, 2)
    torch.testing.assert_close(y[0], torch.stack([x[0, 0], x[0, 2], x[0, 4], torch.zeros(2), torch.zeros(2)]), **EXACT)
    torch.testing.assert_close(y[1], x[1], **EXACT)


def test_reference_select_none_kept_falls_back_to_min_keep():
    x = torch.randn(3, 10, 4)
    scores = torch.rand(3, 8)
    y, lengths = token_ops.token_select_reference(x, scores, torch.tensor(2.0), num_prefix=2, min_keep=1)
    assert lengths.tolist() == [3, 3, 3] and y.shape == (3, 3, 4)
    best = scores.argmax(dim=1)
    torch.testing.assert_close(y[:, 2], x[torch.arange(3), 2 + best], **EXACT)
    torch.testing.assert_close(y[:, :2], x[:, :2], **EXACT)


@pytest.mark.parametrize("cap", [6, 9, 20])
def test_capped_equals_reference_when_under_cap(cap):
    torch.manual_seed(1)
    x = torch.randn(5, 21, 3)
    scores = torch.rand(5, 20) * 2
    scores[:, :12] = 0.0  # at most 8 patches can pass 1.0
    ref_y, ref_len = token_ops.token_select_reference(x, scores, torch.tensor(1.0), 1, 1)
    cap_y, cap_len = token_ops.token_select_capped(x, scores, torch.tensor(1.0), 1, 1, cap)
    if int(ref_len.max()) - 1 <= cap:
        assert cap_len.tolist() == ref_len.tolist()
        k = ref_y.shape[1]
        torch.testing.assert_close(cap_y[:, :k], ref_y, **EXACT)
        assert cap_y[:, k:].abs().max() == 0 if cap_y.shape[1] > k else True
    else:  # truncated: each sample keeps its `cap` best kept patches, still in original order
        keep = token_ops.keep_mask(scores, 1.0, 1)
        for b in range(5):
            kept = keep[b].nonzero().flatten()
            best = kept[scores[b, kept].argsort(descending=True)[:cap]].sort().values
            expected = x[b, 1 + best]
            torch.testing.assert_close(cap_y[b, 1:1 + len(best)], expected, **EXACT)
            assert int(cap_len[b]) == 1 + len(best)


def test_straight_through_has_hard_value_and_soft_gradient():
    scores = torch.tensor([0.2, 0.9, 1.5])
    threshold = torch.tensor(1.0, requires_grad=True)
    soft = token_ops.soft_keep(scores, threshold, tau=0.1)
    gate = token_ops.straight_through(scores > threshold, soft)
    torch.testing.assert_close(gate.detach(), (scores > 1.0).float(), rtol=0, atol=0)
    gate.sum().backward()
    expected = -(soft * (1 - soft)).sum() / 0.1
    torch.testing.assert_close(threshold.grad, expected.detach(), rtol=1e-6, atol=0)


def test_rank_keeps_infinities_apart_from_finite_extremes():
    big = torch.finfo(torch.float32).max
    scores = torch.tensor([[float("-inf"), -big, float("nan"), float("inf"), big]])
    assert token_ops.descending_rank(scores).tolist() == [[3, 2, 4, 0, 1]]
    assert token_ops.keep_mask(scores, float("-inf"), 4).tolist() == [[True, True, False, True, True]]


def test_fixed_count_baseline_keeps_the_best_in_order():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1)
    scores = torch.tensor([[0.2, 0.9, 0.1, 0.9, 0.5]])
    y, lengths = token_ops.token_select_fixed(x, scores, num_prefix=1, count=3)
    assert lengths.tolist() == [4] and y[0, :, 0].tolist() == [0.0, 2.0, 4.0, 5.0]


def test_class_attention_heads_first_layout_is_the_same_computation():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 2, 5), torch.randn(3, 4, 7, 5), torch.randn(3, 4, 7, 5)  # [B, H, N, d]
    valid = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] * 5 + [False] * 2])
    attn, out = token_ops.class_attention(q[:, :, 0], k, v, 0.5, valid)
    attn_h, out_h = token_ops.class_attention(q[:, :, 0].transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), 0.5,
                                              valid, heads_first=True)
    assert torch.allclose(attn_h, attn, atol=1e-6) and torch.allclose(out_h, out, atol=1e-6)
    assert attn[1, :, 3:].eq(0).all()


@pytest.mark.parametrize("heads_first", [False, True])
def test_attention_with_class_row_is_sdpa_plus_class_attention(heads_first):
    """The one-pass form (inference) against the two it replaces: SDPA's output and the class-token pass."""
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 4, 6, 5), torch.randn(3, 4, 6, 5), torch.randn(3, 4, 6, 5)  # [B, H, N, d]
    valid = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 5 + [False]])
    scale = 5 ** -0.5  # SDPA's default for d = 5, as the layers use it
    args = [t.transpose(0, 1) for t in (q, k, v)] if heads_first else [q, k, v]
    out, cls_attn, head_out = token_ops.attention_with_class_row(*args, scale, valid, heads_first=heads_first)
    if heads_first:
        out = out.transpose(0, 1)
    torch.testing.assert_close(out, token_ops.masked_attention(q, k, v, valid), rtol=0, atol=1e-6)
    ref_attn, ref_head = token_ops.class_attention(q[:, :, 0], k, v, scale, valid)
    torch.testing.assert_close(cls_attn, ref_attn, rtol=0, atol=1e-6)
    torch.testing.assert_close(head_out, ref_head, rtol=0, atol=1e-6)
    assert cls_attn[1, :, 2:].eq(0).all()  # exact: masked keys get no attention


def test_attention_with_class_row_takes_the_additive_key_bias():
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 4, 5, 6) for _ in range(3))  # [H, B, N, d]: heads first, as the packed layout runs it
    bias = torch.zeros(4, 1, 5)
    bias[2, 0, 3:] = -50.0
    _, cls_attn, head_out = token_ops.attention_with_class_row(q, k, v, 0.3, key_bias=bias, heads_first=True)
    ref_attn, ref_head = token_ops.class_attention(q[:, :, 0], k, v, 0.3, None, heads_first=True, key_bias=bias)
    torch.testing.assert_close(cls_attn, ref_attn, rtol=0, atol=1e-6)
    torch.testing.assert_close(head_out, ref_head, rtol=0, atol=1e-6)
    assert cls_attn[2, :, 3:].max() < 1e-20  # e^-50 of the row's largest weight at most

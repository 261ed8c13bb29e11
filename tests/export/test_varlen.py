"""Per-sample attention: the eager op against padded attention, and its ONNX Loop against the eager op."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from pipeline.export.varlen import DOMAIN, OP_TYPE, expand_varlen_attention, placeholders_left, register_schema
from pipeline.models.packed import layout_from_lengths
from pipeline.models.varlen_op import varlen_attention
from pipeline.runtime import import_onnxruntime

HEADS, DIM, SCALE = 3, 8, 0.35


def _packed(lengths: list[int], seed: int = 0, context: list[int] | None = None):
    """Packed q [H, R, d] and kv [2, H, Rk, d] rows, the queries' layout and the keys' (each sample's own rows, then
    `context[b]` more keys of its own: context mode)."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    layout = layout_from_lengths(lengths_t, max(lengths))
    keys = lengths_t + torch.tensor(context or [0] * len(lengths))
    key_layout = layout_from_lengths(keys, int(keys.max()))
    q = torch.randn(HEADS, sum(lengths), DIM, generator=gen)
    kv = torch.randn(2, HEADS, int(keys.sum()), DIM, generator=gen)
    return q, kv, layout, key_layout


def _args(layout, key_layout):
    return layout.starts, layout.lengths, key_layout.starts, key_layout.lengths, layout.flat, SCALE


def _feed(q, kv, layout, key_layout) -> dict:
    return {"q": q.numpy(), "kv": kv.numpy(), "q_starts": layout.starts.numpy(), "q_lengths": layout.lengths.numpy(),
            "kv_starts": key_layout.starts.numpy(), "kv_lengths": key_layout.lengths.numpy(),
            "flat": layout.flat.numpy()}


@pytest.mark.parametrize("context", [None, [2, 0, 3]])
def test_eager_op_equals_masked_padded_attention(context):
    q, kv, layout, key_layout = _packed([5, 2, 4], context=context)
    out = varlen_attention(q, kv, *_args(layout, key_layout))
    padded_q = q.index_select(1, layout.index).reshape(HEADS, 3, -1, DIM)  # [H, B, K, d], padding repeats row 0
    k, v = kv.index_select(2, key_layout.index).reshape(2, HEADS, 3, -1, DIM).unbind(0)
    mask = key_layout.valid[:, None, :]  # keys of the sample's own rows only
    ref = F.scaled_dot_product_attention(padded_q, k, v, attn_mask=mask, scale=SCALE)  # [H, B, K, d]
    ref = ref.reshape(HEADS, -1, DIM).index_select(1, layout.flat).permute(1, 0, 2).reshape(-1, HEADS * DIM)
    assert out.shape == (11, HEADS * DIM)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


INPUTS = ("q", "kv", "q_starts", "q_lengths", "kv_starts", "kv_lengths", "flat")


def _placeholder_model(twice: bool = False) -> onnx.ModelProto:
    """(q, kv) -> placeholder -> out; `twice`: a second placeholder, of the same node name, on q + 1."""
    register_schema()
    node = lambda q, out: helper.make_node(OP_TYPE, [q, *INPUTS[1:]], [out], name="attend",  # noqa: E731
                                           domain=DOMAIN, scale=SCALE)
    nodes = [node("q", "out")]
    if twice:
        nodes = [node("q", "first"), helper.make_node("Add", ["q", "one"], ["shifted"], name="shift"),
                 node("shifted", "second"), helper.make_node("Add", ["first", "second"], ["out"], name="sum")]
    graph = helper.make_graph(
        nodes, "varlen",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [HEADS, "R", DIM]),
         helper.make_tensor_value_info("kv", TensorProto.FLOAT, [2, HEADS, "Rk", DIM]),
         *(helper.make_tensor_value_info(name, TensorProto.INT64, ["B"]) for name in INPUTS[2:6]),
         helper.make_tensor_value_info("flat", TensorProto.INT64, ["R"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["R", HEADS * DIM])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def test_expansion_replaces_the_placeholder_with_an_if_over_batched_and_per_sample_attention():
    model = _placeholder_model()
    assert placeholders_left(model) == 1
    assert expand_varlen_attention(model) == 1
    (branch,) = [n for n in model.graph.node if n.op_type == "If"]
    graphs = {a.name: a.g for a in branch.attribute}
    assert [n.op_type for n in graphs["then_branch"].node].count("Loop") == 0  # one length: batched attention
    assert [n.op_type for n in graphs["else_branch"].node].count("Loop") == 1  # lengths differ: sample by sample
    assert placeholders_left(model) == 0
    assert DOMAIN not in {o.domain for o in model.opset_import}
    onnx.checker.check_model(model)


@pytest.mark.parametrize("lengths,context", [([4], None), ([3, 3, 3], None), ([5, 2, 4], None), ([1, 6], None),
                                             ([4], [3]), ([3, 3], [2, 2]), ([3, 3], [1, 2]), ([5, 2, 4], [0, 4, 1])])
def test_expansion_equals_the_eager_op(lengths, context):
    """Uniform queries and keys take the batched branch; different query or key counts the loop."""
    model = _placeholder_model()
    expand_varlen_attention(model)
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q, kv, layout, key_layout = _packed(lengths, seed=len(lengths), context=context)
    out = session.run(None, _feed(q, kv, layout, key_layout))[0]
    ref = varlen_attention(q, kv, *_args(layout, key_layout)).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-6


def test_two_placeholders_of_one_name_expand_apart():
    model = _placeholder_model(twice=True)
    assert expand_varlen_attention(model) == 2
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q, kv, layout, key_layout = _packed([3, 5])
    args = _args(layout, key_layout)
    ref = (varlen_attention(q, kv, *args) + varlen_attention(q + 1, kv, *args)).numpy()
    out = session.run(None, _feed(q, kv, layout, key_layout))[0]
    assert np.abs(out - ref).max() <= 1e-6


def test_eager_op_places_rows_by_flat():
    """`flat` is where each packed row sits in the padded view: a layout of another width misplaces rows."""
    q, kv, layout, key_layout = _packed([3, 2])
    good = varlen_attention(q, kv, *_args(layout, key_layout))
    wide = layout_from_lengths(layout.lengths, 4)  # K = 4 instead of max(lengths) = 3
    assert not torch.allclose(varlen_attention(q, kv, *_args(wide, key_layout)), good)

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


def _packed(lengths: list[int], seed: int = 0):
    lengths_t = torch.tensor(lengths)
    layout = layout_from_lengths(lengths_t, max(lengths))
    qkv = torch.randn(3, HEADS, sum(lengths), DIM, generator=torch.Generator().manual_seed(seed))
    return qkv, layout


def test_eager_op_equals_masked_padded_attention():
    qkv, layout = _packed([5, 2, 4])
    out = varlen_attention(qkv, layout.starts, layout.lengths, layout.flat, SCALE)
    padded = qkv.index_select(2, layout.index).reshape(3, HEADS, 3, -1, DIM)  # [3, H, B, K, d], padding repeats row 0
    mask = layout.valid[:, None, :]  # keys of the sample's own rows only
    ref = F.scaled_dot_product_attention(*padded.unbind(0), attn_mask=mask, scale=SCALE)  # [H, B, K, d]
    ref = ref.reshape(HEADS, -1, DIM).index_select(1, layout.flat).permute(1, 0, 2).reshape(-1, HEADS * DIM)
    assert out.shape == (11, HEADS * DIM)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def _placeholder_model(twice: bool = False) -> onnx.ModelProto:
    """qkv -> placeholder -> out; `twice`: a second placeholder, of the same node name, on qkv + 1."""
    register_schema()
    node = lambda q, out: helper.make_node(OP_TYPE, [q, "starts", "lengths", "flat"], [out], name="attend",  # noqa
                                           domain=DOMAIN, scale=SCALE)
    nodes = [node("qkv", "out")]
    if twice:
        nodes = [node("qkv", "first"), helper.make_node("Add", ["qkv", "one"], ["shifted"], name="shift"),
                 node("shifted", "second"), helper.make_node("Add", ["first", "second"], ["out"], name="sum")]
    graph = helper.make_graph(
        nodes, "varlen",
        [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [3, HEADS, "R", DIM]),
         helper.make_tensor_value_info("starts", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["B"]),
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


@pytest.mark.parametrize("lengths", [[4], [3, 3, 3], [5, 2, 4], [1, 6]])
def test_expansion_equals_the_eager_op(lengths):
    model = _placeholder_model()
    expand_varlen_attention(model)
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    qkv, layout = _packed(lengths, seed=len(lengths))
    feed = {"qkv": qkv.numpy(), "starts": layout.starts.numpy(), "lengths": layout.lengths.numpy(),
            "flat": layout.flat.numpy()}
    out = session.run(None, feed)[0]
    ref = varlen_attention(qkv, layout.starts, layout.lengths, layout.flat, SCALE).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-6


def test_two_placeholders_of_one_name_expand_apart():
    model = _placeholder_model(twice=True)
    assert expand_varlen_attention(model) == 2
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    qkv, layout = _packed([3, 5])
    args = (layout.starts, layout.lengths, layout.flat, SCALE)
    ref = (varlen_attention(qkv, *args) + varlen_attention(qkv + 1, *args)).numpy()
    out = session.run(None, {"qkv": qkv.numpy(), "starts": layout.starts.numpy(), "lengths": layout.lengths.numpy(),
                             "flat": layout.flat.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-6


def test_eager_op_places_rows_by_flat():
    """`flat` is where each packed row sits in the padded view: a layout of another width misplaces rows."""
    qkv, layout = _packed([3, 2])
    good = varlen_attention(qkv, layout.starts, layout.lengths, layout.flat, SCALE)
    wide = layout_from_lengths(layout.lengths, 4)  # K = 4 instead of max(lengths) = 3
    assert not torch.allclose(varlen_attention(qkv, wide.starts, wide.lengths, wide.flat, SCALE), good)

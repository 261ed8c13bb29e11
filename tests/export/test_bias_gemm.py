"""The bias-into-Gemm pass: which MatMuls it rewrites, and that ONNX Runtime computes the same values after it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.export.bias_gemm import fuse_bias_into_gemm
from pipeline.runtime import import_onnxruntime

K, N = 6, 5


def _graph(tokens: str | int = "T") -> onnx.ModelProto:
    """x [B, T, K]: a linear layer (rewritten); a MatMul whose output a second node also reads, a MatMul by an
    activation, and a MatMul whose Add's operand has the wrong shape (none of those three rewritten)."""
    rng = np.random.default_rng(0)
    init = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="linear"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        helper.make_node("MatMul", ["x", "w"], ["shared"], name="shared_mm"),
        helper.make_node("Add", ["shared", "b"], ["shared_b"], name="shared_add"),
        helper.make_node("Relu", ["shared"], ["shared_relu"], name="second_reader"),
        helper.make_node("MatMul", ["y", "act"], ["by_act"], name="activation_mm"),
        helper.make_node("Add", ["by_act", "c"], ["z"], name="activation_add"),
        helper.make_node("MatMul", ["x", "w"], ["wide"], name="wide_mm"),
        helper.make_node("Add", ["wide", "b2"], ["wide_b"], name="wide_add"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", tokens, K]),
         helper.make_tensor_value_info("act", TensorProto.FLOAT, ["B", N, 3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", tokens, width])
         for name, width in (("y", N), ("shared_b", N), ("shared_relu", N), ("z", 3), ("wide_b", N))],
        [init("w", K, N), init("b", N), init("c", 3), init("b2", 1, N),
         init(f"bias_gemm/rows_{K}", 2)])  # an initializer under the name the pass would give its reshape target
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    session = import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("tokens", ["T", 4])
def test_only_a_weight_matmul_read_by_its_bias_add_alone_is_rewritten(tokens):
    """With a symbolic token count the output's leading dims are read with Shape + Concat; with a known one the
    reshape takes a constant [-1, 4, N] and no Shape node is left. Batch 0 keeps working either way."""
    model = _graph(tokens)
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((2, 4, K)).astype(np.float32),
            "act": rng.standard_normal((2, N, 3)).astype(np.float32)}
    empty = {"x": feed["x"][:0], "act": feed["act"][:0]}
    before, before_empty = _run(model, feed), _run(model, empty)
    assert fuse_bias_into_gemm(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gemm") == 1 and ops.count("MatMul") == 3 and ops.count("Add") == 3
    assert ops.count("Shape") == (1 if tokens == "T" else 0)
    assert "bias" not in {n.name for n in model.graph.node}  # the linear layer's Add is gone
    names = [t.name for t in model.graph.initializer]
    assert len(names) == len(set(names))  # its constants took names of their own
    onnx.checker.check_model(model)
    after = _run(model, feed)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    assert [a.shape for a in _run(model, empty)] == [a.shape for a in before_empty]
    assert fuse_bias_into_gemm(model) == 0  # nothing left to rewrite


def test_a_dense_vit_export_keeps_its_logits(fmnist_root, tmp_path):
    """Every linear layer of an exported ViT becomes a Gemm (export_onnx runs the pass on every flavor); ONNX
    Runtime's logits stay those of PyTorch."""
    from pipeline.export.onnx_export import export_onnx
    from pipeline.models import build_teacher
    from tests.build.helpers import export_info
    from tests.conftest import tiny_config

    dense = build_teacher(tiny_config(fmnist_root, model={"depth": 2, "num_heads": 2, "embed_dim": 32})).eval()
    path = export_onnx(dense, "dense", tmp_path / "dense.onnx", export_info("dense", tmp_path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Gemm") == 4 * 2 + 1 and "MatMul" in ops  # qkv, proj, fc1, fc2 per block, the head; attention
    assert not [n for n in onnx.load(str(path)).graph.node if n.name.endswith("/bias_gemm/lead")]  # 17 tokens, known
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = dense.forward_dropped(images)[0].numpy()
    out = _run(onnx.load(str(path)), {"images": images.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4

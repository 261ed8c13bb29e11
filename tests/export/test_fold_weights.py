"""Folding weight views: Transpose and Slice over initializers become initializers, the graph computes the same, and a
parameter whose views partition it is not stored twice."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pipeline.export.fold_weights import fold_weight_views


def _model() -> tuple[onnx.ModelProto, np.ndarray]:
    """y = x @ W[:2].T + concat(x, x) @ W[2:].T with W [6, 4] read through Slice and Transpose, as exported."""
    weight = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
    ints = lambda name, values: numpy_helper.from_array(np.array(values, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["W", "zero", "two", "axis0"], ["w_q"]),
        helper.make_node("Slice", ["W", "two", "six", "axis0"], ["w_kv"]),
        helper.make_node("Transpose", ["w_q"], ["w_q_t"], perm=[1, 0]),
        helper.make_node("Transpose", ["w_kv"], ["w_kv_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w_q_t"], ["q"]),
        helper.make_node("Concat", ["x", "x"], ["xx"], axis=0),
        helper.make_node("MatMul", ["xx", "w_kv_t"], ["kv"]),
        helper.make_node("ReduceSum", ["kv"], ["kv_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["q"], ["q_sum"], keepdims=0),
        helper.make_node("Add", ["q_sum", "kv_sum"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(weight, "W"), ints("zero", [0]), ints("two", [2]), ints("six", [6]),
         ints("axis0", [0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), weight


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_views_fold_into_initializers_and_compute_the_same():
    model, weight = _model()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    before = _run(model, x)
    assert fold_weight_views(model) == 4
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Concat", "MatMul", "ReduceSum", "ReduceSum", "Add"]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert "W" not in stored, "the parameter goes once nothing reads it"
    np.testing.assert_array_equal(stored["w_q_t"], weight[:2].T)
    np.testing.assert_array_equal(stored["w_kv_t"], weight[2:].T)
    assert sum(v.size for v in stored.values() if v.ndim == 2) == weight.size, "the views partition W: no copy"


def test_nothing_to_fold_leaves_the_graph_alone():
    model, _ = _model()
    fold_weight_views(model)
    nodes = list(model.graph.node)
    assert fold_weight_views(model) == 0 and list(model.graph.node) == nodes

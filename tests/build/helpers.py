"""Test helpers: tiny ONNX files shaped like TokenGate's exports (input images [B, 1, 28, 28], ExportInfo metadata),
made in milliseconds for the build tests that stop before TensorRT builds anything, and stand-in engines (bytes plus
a valid engine.json) for the runner's checks."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.build import engine_info
from pipeline.build.engine_info import EngineInfo
from pipeline.config import Config
from pipeline.export.metadata import ExportInfo, attach

SIZE, CLASSES = 28, 10
DEFAULT_GEOMETRY = {"arch": "vit_tiny_patch16_224", "img_size": 28, "in_chans": 1, "patch_size": 4, "embed_dim": 64,
                    "depth": 6, "num_heads": 4, "mlp_ratio": 4.0}  # configs/fmnist-tiny.yaml's model


def export_info(flavor: str, run_dir: Path) -> ExportInfo:
    return ExportInfo(flavor=flavor, model="teacher" if flavor == "dense" else "student", config=Config().to_dict(),
                      stages=[] if flavor == "dense" else [1], thresholds=[] if flavor == "dense" else [0.5],
                      min_keep=1, num_prefix=1, caps=[8] if flavor == "capped" else None,
                      truncation_rate=0.0 if flavor == "capped" else None, input_shape=[1, SIZE, SIZE], opset=20,
                      run_dir=str(run_dir))


def tiny_model(flavor: str) -> onnx.ModelProto:
    """images -> rows [B, 28, 28] -> (plugin: TokenSelect over the rows) -> mean row -> logits [B, 10]."""
    nodes = [helper.make_node("Reshape", ["images", "rows_shape"], ["rows"])]
    inits = [numpy_helper.from_array(np.array([0, SIZE, SIZE], np.int64), "rows_shape"),
             numpy_helper.from_array(np.full((SIZE, CLASSES), 0.01, np.float32), "head.weight")]
    rows = "rows"
    if flavor == "plugin":
        nodes += [helper.make_node("ReduceMean", ["rows", "axes2"], ["all_scores"], keepdims=0),
                  helper.make_node("Slice", ["all_scores", "one", "big", "one"], ["scores"]),
                  helper.make_node("TokenSelect", ["rows", "scores", "threshold"], ["kept", "lengths"],
                                   domain="tokengate", num_prefix=1, min_keep=1)]
        inits += [numpy_helper.from_array(np.array([2], np.int64), "axes2"),
                  numpy_helper.from_array(np.array([1], np.int64), "one"),
                  numpy_helper.from_array(np.array([1 << 30], np.int64), "big"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "threshold")]
        rows = "kept"
    nodes += [helper.make_node("ReduceMean", [rows, "axes1"], ["pooled"], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head.weight"], ["logits"])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
    graph = helper.make_graph(
        nodes, flavor, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], inits)
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid("tokengate", 1)] if flavor == "plugin" else [])
    return helper.make_model(graph, opset_imports=opsets)


def write_export(run_dir: Path, flavor: str, model: onnx.ModelProto | None = None) -> Path:
    """runs/X/model.<flavor>.onnx with TokenGate metadata, as `tokengate export` names it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else tiny_model(flavor)
    attach(model, export_info(flavor, run_dir))
    path = run_dir / f"model.{flavor}.onnx"
    onnx.save(model, str(path))
    return path


def quantize(model: onnx.ModelProto, zero_point: int = 0, bias_int32: bool = False) -> onnx.ModelProto:
    """Put a Q/DQ pair on the MatMul's weight (and optionally an int32 'bias' DQ), as explicit quantization does."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(0.01, np.float32), "w.scale"),
                              numpy_helper.from_array(np.array(zero_point, np.int8), "w.zero")])
    qdq = [helper.make_node("QuantizeLinear", ["head.weight", "w.scale", "w.zero"], ["w.q"], name="w_q"),
           helper.make_node("DequantizeLinear", ["w.q", "w.scale", "w.zero"], ["w.dq"], name="w_dq")]
    if bias_int32:
        graph.initializer.append(numpy_helper.from_array(np.zeros(CLASSES, np.int32), "b.q"))
        graph.initializer.append(numpy_helper.from_array(np.array(1e-4, np.float32), "b.scale"))
        qdq.append(helper.make_node("DequantizeLinear", ["b.q", "b.scale"], ["b.dq"], name="bias_dq"))
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    matmul.input[1] = "w.dq"
    index = list(graph.node).index(matmul)
    for offset, node in enumerate(qdq):
        graph.node.insert(index + offset, node)
    return model


def topk_model(constant_k: bool, tokens: int = 16, channels: int = 8) -> onnx.ModelProto:
    """x [B, N, C] -> TopK over N of the row means, k = a constant, or the batch's largest count of positive means
    (the native flavor's data-dependent K) -> the kept rows' mean [B, C]."""
    nodes = [helper.make_node("ReduceMean", ["x", "ax2"], ["scores"], keepdims=0)]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2")]
    if constant_k:
        inits.append(numpy_helper.from_array(np.array([tokens // 2], np.int64), "k"))
    else:
        inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
                  numpy_helper.from_array(np.array([1], np.int64), "one")]
        nodes += [helper.make_node("Greater", ["scores", "zero"], ["mask"]),
                  helper.make_node("Cast", ["mask"], ["mask_i"], to=TensorProto.INT64),
                  helper.make_node("ReduceSum", ["mask_i", "ax1"], ["counts"], keepdims=0),
                  helper.make_node("ReduceMax", ["counts"], ["largest"], keepdims=1),
                  helper.make_node("Max", ["largest", "one"], ["k"])]
    nodes += [helper.make_node("TopK", ["scores", "k"], ["values", "index"], axis=1, name="select"),
              helper.make_node("Unsqueeze", ["index", "ax2"], ["index3"]),
              helper.make_node("Shape", ["x"], ["x_shape"]),
              helper.make_node("Shape", ["index3"], ["i_shape"]),
              helper.make_node("Slice", ["i_shape", "s0", "s2"], ["i_bk"]),
              helper.make_node("Slice", ["x_shape", "s2", "s3"], ["x_c"]),
              helper.make_node("Concat", ["i_bk", "x_c"], ["gather_shape"], axis=0),
              helper.make_node("Expand", ["index3", "gather_shape"], ["index_bkc"]),
              helper.make_node("GatherElements", ["x", "index_bkc"], ["kept"], axis=1),
              helper.make_node("ReduceMean", ["kept", "ax1"], ["out"], keepdims=0)]
    inits += [numpy_helper.from_array(np.array([v], np.int64), f"s{v}") for v in (0, 2, 3)]
    graph = helper.make_graph(nodes, "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            ["B", tokens, channels])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", channels])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def make_engine(tmp_path: Path, payload: bytes = b"plan" * 100, **overrides) -> tuple[Path, EngineInfo]:
    engine = tmp_path / "model.capped.sm86.fp16.engine"
    engine.write_bytes(payload)
    fields = dict(engine=engine.name, engine_sha256=hashlib.sha256(payload).hexdigest(), engine_bytes=len(payload),
                  runtime="tensorrt-rtx", runtime_version="1.7.1.116", target="sm86", precision="fp16",
                  flavor="capped", input_name="images", input_shape=[1, 28, 28],
                  profile={"min": 1, "opt": 32, "max": 128}, plugin_lib=None,
                  onnx={"path": str(tmp_path / "model.capped.onnx"), "sha256": "0" * 64}, build_seconds=3.5,
                  built_at="2025-11-01T00:00:00+00:00", built_on="cpu")
    fields.update(overrides)
    info = EngineInfo(**fields)
    engine_info.write_info(engine, info)
    return engine, info

"""ONNX models for the ops, runtime, runners and validate tests.

Handmade graphs build in milliseconds and pin one behaviour each; the real export of a tiny run takes tens of
seconds on 2 busy cores, so `exported_run` does it once per test session and every test file shares it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.config import Config
from pipeline.export import schema
from pipeline.export.exporter_id import exporter_id
from pipeline.export.metadata import ExportInfo, attach
from pipeline.export.onnx_export import export_passes

TOKENS, CHANNELS = 4, 4  # the handmade models read a [B, 1, 4, 4] image as 4 tokens of 4 channels
_exported: dict[str, tuple[Config, Path]] = {}


def token_select_graph(num_prefix: int, min_keep: int) -> onnx.ModelProto:
    """x [B, N, C], scores [B, N-P], threshold [] -> one tokengate::TokenSelect node -> y, lengths."""
    schema.register_schema()
    node = helper.make_node("TokenSelect", ["x", "scores", "threshold"], ["y", "lengths"], domain="tokengate",
                            num_prefix=num_prefix, min_keep=min_keep)
    graph = helper.make_graph(
        [node], "token_select",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "N", "C"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "M"]),
         helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "K", "C"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), schema.opset_import()])


def _scored_stage(prefix: str, x: str, theta: float) -> tuple[list, list, str]:
    """block compute (MatMul) -> scores (ReduceMean, Div) -> S > theta -> mask the tokens (Where, as exports apply
    masks) -> LayerNormalization."""
    c = lambda name, value: numpy_helper.from_array(np.array(value, np.float32), f"{prefix}{name}")  # noqa: E731
    inits = [c("w", np.eye(4)), c("two", 2.0), c("theta", theta), c("zero", 0.0), c("ninf", -np.inf)]
    n = lambda op, ins, outs, **kw: helper.make_node(op, [f"{prefix}{i}" if i not in (x,) else i for i in ins],  # noqa
                                                     [f"{prefix}{o}" for o in outs], name=f"{prefix}{outs[0]}", **kw)
    nodes = [
        n("MatMul", [x, "w"], ["h"]),
        n("ReduceMean", ["h"], ["raw"], axes=[2], keepdims=0),
        n("Div", ["raw", "two"], ["scores"]),
        n("Greater", ["scores", "theta"], ["keep"]),
        n("Where", ["keep", "scores", "ninf"], ["ranked"]),  # a copy of S (as in the capped re-ranking)
        n("Greater", ["ranked", "zero"], ["positive"]),  # compares the copy with a constant: not a stage of its own
        n("And", ["keep", "positive"], ["kept"]),
        n("Unsqueeze", ["kept", "axis"], ["mask3"]),
        n("Where", ["mask3", "h", "zero"], ["y"]),
        n("LayerNormalization", ["y", "gamma"], ["normed"], axis=-1),
    ]
    inits += [numpy_helper.from_array(np.array([2], np.int64), f"{prefix}axis"), c("gamma", np.ones(4))]
    return nodes, inits, f"{prefix}normed"


def two_stage_graph() -> onnx.ModelProto:
    """Two standard-op token stages on x [B, 5, 4]: what the selection finder and the bench's region timer take
    apart."""
    nodes1, inits1, out1 = _scored_stage("a_", "x", 1.0)
    nodes2, inits2, out2 = _scored_stage("b_", out1, 0.5)
    graph = helper.make_graph(nodes1 + nodes2, "two_stages",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, 4])],
                              [helper.make_tensor_value_info(out2, TensorProto.FLOAT, ["B", 5, 4])], inits1 + inits2)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def tiny_model(flavor: str, cfg: Config, run_dir: Path, tagged: bool = True) -> onnx.ModelProto:
    """images [B, 1, 4, 4] -> 4 tokens -> (plugin: TokenSelect on the mean channel value) -> logits, kept_tokens.

    Not a ViT, but a file of the given flavor with TokenGate metadata (unless `tagged` is False), which is all the
    runtime and runner logic reads.
    """
    shape = numpy_helper.from_array(np.array([0, TOKENS, CHANNELS], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["x"])]
    inits = [shape]
    if flavor == "plugin":
        inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
                  numpy_helper.from_array(np.array([TOKENS], np.int64), "end"),
                  numpy_helper.from_array(np.array([2], np.int64), "two"),
                  numpy_helper.from_array(np.array(0.0, np.float32), "threshold")]
        nodes += [helper.make_node("Slice", ["x", "one", "end", "one"], ["patches"]),
                  helper.make_node("ReduceMean", ["patches", "two"], ["scores"], keepdims=0),
                  helper.make_node("TokenSelect", ["x", "scores", "threshold"], ["y", "lengths"], domain="tokengate",
                                   num_prefix=1, min_keep=1),
                  helper.make_node("Unsqueeze", ["lengths", "one"], ["kept_tokens"])]
    else:
        inits.append(numpy_helper.from_array(np.array([[TOKENS]], np.int32), "all"))
        nodes += [helper.make_node("Identity", ["x"], ["y"]),
                  helper.make_node("Shape", ["images"], ["batch"], end=1),
                  helper.make_node("Concat", ["batch", "one_i64"], ["kept_shape"], axis=0),
                  helper.make_node("Expand", ["all", "kept_shape"], ["kept_tokens"])]
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "one_i64"))
    nodes.append(helper.make_node("ReduceSum", ["y", "one_axis"], ["logits"], keepdims=0))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one_axis"))
    graph = helper.make_graph(
        nodes, f"tiny_{flavor}", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", CHANNELS]),
         helper.make_tensor_value_info("kept_tokens", TensorProto.INT32, ["B", 1])], inits)
    opsets = [helper.make_opsetid("", 20)] + ([schema.opset_import()] if flavor == "plugin" else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    if tagged:
        attach(proto, ExportInfo(flavor=flavor, model="teacher" if flavor == "dense" else "student",
                                 config=cfg.to_dict(), stages=[1], thresholds=[0.0], min_keep=1, num_prefix=1,
                                 caps=[TOKENS - 1] if flavor == "capped" else None,
                                 truncation_rate=0.0 if flavor == "capped" else None, input_shape=[1, 4, 4],
                                 opset=20, run_dir=str(run_dir), passes=dict.fromkeys(export_passes(flavor), 0),
                                 exporter=exporter_id()))
    return proto


def write_tiny(directory: Path, flavor: str, cfg: Config, name: Optional[str] = None, tagged: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"model.{flavor}.onnx")
    onnx.save(tiny_model(flavor, cfg, directory, tagged), str(path))
    return path


def exported_run(tmp_path_factory, fmnist_root: Path) -> tuple[Config, Path]:
    """A 3-block run (untrained, sharpened attention so the stages drop tokens) exported as plugin and native."""
    if "run" not in _exported:
        from pipeline.export.run_export import export_run
        from tests.conftest import make_run, tiny_config

        cfg = tiny_config(fmnist_root, model={"depth": 3}, gates={"token_stages": [1, 2], "init_threshold": 1.0})
        run = make_run(tmp_path_factory.mktemp("exported_run"), cfg)
        export_run(run, ["plugin", "native"])
        _exported["run"] = (cfg, run)
    return _exported["run"]

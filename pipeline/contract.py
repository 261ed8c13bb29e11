"""The `tokengate::TokenSelect` v1 contract (DESIGN.md §3), spelled once for every Python module.

The ONNX schema (pipeline.export.schema), the ONNX Runtime registration (pipeline.ops.ort_register), the session
planner, the TensorRT preparation of the graph (pipeline.build) and calib/ take the names from here. The C++ plugin
keeps its own constants (plugins/tokenSelect/tokenSelectPlugin.h) and its README its own table;
tests/test_contract.py checks that both agree with this module.
"""
from __future__ import annotations

DOMAIN = "tokengate"  # the ONNX opset domain, and the TensorRT plugin namespace
OP_TYPE = "TokenSelect"  # the ONNX op type, and the TensorRT plugin name
VERSION = 1  # the ONNX opset version, and the TensorRT plugin version
INPUTS = ("x", "scores", "threshold")  # [B, N, C], [B, N - P], []
OUTPUTS = ("y", "lengths")  # [B, K, C], [B] int32
ATTRIBUTES = ("num_prefix", "min_keep")  # ints, each at least 1


def is_token_select(node) -> bool:
    """Whether an ONNX node is a TokenSelect node of this contract."""
    return node.domain == DOMAIN and node.op_type == OP_TYPE

"""The ONNX side of `tokengate::TokenSelect` v1: its schema, and how the exporter writes the node."""
from __future__ import annotations

import onnx
import onnxscript
from onnx import defs

from pipeline.contract import DOMAIN, OP_TYPE, VERSION

_Param = defs.OpSchema.FormalParameter
_Attr = defs.OpSchema.Attribute


def _schema() -> defs.OpSchema:
    S = defs.OpSchema
    return S(
        OP_TYPE, DOMAIN, VERSION,
        doc="Per sample: the num_prefix prefix rows, then the patch rows whose score > threshold (topped up to "
            "min_keep by rank), in original order, then zero rows up to K = max(lengths).",
        inputs=[_Param("x", "T", "[B, N, C] tokens"), _Param("scores", "T", "[B, N - num_prefix] patch scores"),
                _Param("threshold", "T", "[] threshold")],
        outputs=[_Param("y", "T", "[B, K, C] kept tokens, zero-padded"),
                 _Param("lengths", "tensor(int32)", "[B] kept tokens per sample, prefix included")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tokens and scores")],
        attributes=[_Attr("num_prefix", S.AttrType.INT, "class/distillation/register tokens, always kept"),
                    _Attr("min_keep", S.AttrType.INT, "patch tokens kept at least")],
    )


def register_schema() -> None:
    """Make onnx (checker, shape inference) know the op; idempotent."""
    if not defs.has(OP_TYPE, DOMAIN):
        defs.register_schema(_schema())


_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def token_select_onnx(x, scores, threshold, num_prefix: int, min_keep: int):
    """Translation of torch.ops.tokengate.token_select into one TokenSelect node."""
    return _opset.TokenSelect(x, scores, threshold, num_prefix=num_prefix, min_keep=min_keep, _num_outputs=2)


def opset_import() -> onnx.OperatorSetIdProto:
    return onnx.helper.make_opsetid(DOMAIN, VERSION)

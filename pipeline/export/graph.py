"""Facts about an exported ONNX graph that several passes read (quantization, TensorRT preparation, profiling)."""
from __future__ import annotations

import onnx


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Tensors fixed at export: initializers and the outputs of Constant nodes."""
    constants = {t.name for t in model.graph.initializer}
    return constants | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}

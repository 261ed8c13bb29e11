"""ONNX export of gated ViTs in every flavor (plugin, native, capped, packed) plus the dense teacher, with the graph
passes each export runs (fold_weights, varlen, bias_gemm) and the op schema (schema)."""

"""ONNX export of gated ViTs in three flavors (plugin, native, capped) plus the dense teacher."""

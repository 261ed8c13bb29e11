"""The export flavors and which one to deploy on which runtime: facts the CLI's help, the exporter and the bench
report all state, kept in a module that imports nothing, so `tokengate --help` does not load PyTorch."""
from __future__ import annotations

FLAVORS = ("plugin", "native", "capped", "packed", "dense")
# Which flavor to deploy where (also in `tokengate export --help`, the bench report and the README).
DEPLOY = {"ONNX Runtime CPU": "packed", "TensorRT": "plugin (adaptive K), or capped for static shapes",
          "TensorRT-RTX, CUDA graphs": "capped", "other ONNX runtimes": "native"}
TENSORRT_FLAVORS = ("plugin", "capped")  # built by TensorRT / TensorRT-RTX: scores keep a separate class-token pass

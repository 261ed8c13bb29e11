"""`tokengate build`: an exported ONNX -> a TensorRT or TensorRT-RTX engine for one GPU target, plus its engine.json.

One job per module: `targets` (GPU names, detection), `profile` (the batch range), `onnx_prep` (the ONNX TensorRT
parses: plugin outputs, bounded TopK, fp16, Q/DQ checks), `plugin_lib` (our plugin library), `runtimes` (which
builder), `network` (parse + build, shared by both), `progress` (build progress), `tensorrt_builder` and
`rtx_builder` (what each accepts, and its settings), `engine_info` (engine.json), `run_build` (the whole build) and
`stage` (`make engine`). Nothing here imports TensorRT at import time.
"""

"""Runners: one interface over PyTorch, ONNX Runtime and TensorRT, so `validate` and `bench` compare like with like.

Each runner takes a float32 batch [B, C, H, W] and returns logits and kept tokens per stage as NumPy arrays, and
holds the same model as a Polygraphy runner (`.polygraphy`: OnnxrtRunner over our session, TrtRunner over our
engine, a BaseRunner over the PyTorch model) for Polygraphy's Comparator. `compare` holds the comparisons.
"""
from pipeline.runners.base import RUNTIMES, Runner, RunnerOutput, runtime_name
from pipeline.runners.factory import make_runner

__all__ = ["RUNTIMES", "Runner", "RunnerOutput", "make_runner", "runtime_name"]

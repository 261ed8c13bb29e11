"""TokenGate: input-adaptive, compressed Vision Transformers from training to TensorRT engines."""

__version__ = "0.1.0"

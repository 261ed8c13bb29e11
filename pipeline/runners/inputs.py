"""Input checks shared by every runner, so a bad batch gets the same clear error on every runtime.

Non-finite inputs are refused, never run: a NaN pixel can reach every token through attention and the scores,
and a runtime returns logits for it without complaint. The error names the samples, so a caller (the validator)
can screen them out and report them instead.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.errors import TokenGateError, fail


class NonFiniteInput(TokenGateError):
    """Some samples of a batch hold NaN or Inf; `samples` lists their indices in the batch."""

    def __init__(self, samples: Sequence[int], batch: int):
        self.samples = [int(s) for s in samples]
        shown = ", ".join(map(str, self.samples[:10])) + (", ..." if len(self.samples) > 10 else "")
        super().__init__(str(fail(f"input samples [{shown}] ({len(self.samples)} of {batch}) contain NaN or Inf, "
                                  "so the runner refuses the batch rather than return their logits",
                                  "check the preprocessing (e.g. a zero in data.std) or drop those images")))


def nonfinite_samples(images: np.ndarray) -> np.ndarray:
    """Indices of the samples (axis 0) that hold any NaN or Inf."""
    flat = images.reshape(images.shape[0], -1)
    return np.flatnonzero(~np.isfinite(flat).all(axis=1))


def check_batch(images: Any, input_shape: Sequence[int]) -> np.ndarray:
    """A C-contiguous float32 [B, C, H, W] batch, or a one-line error naming the expected shape.

    Nothing is converted silently: float64 or uint8 pixels usually mean a preprocessing step was skipped.
    """
    if hasattr(images, "detach"):  # a torch tensor
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise fail(f"the input is a {type(images).__name__}, not an array", "pass a float32 NumPy array [B, C, H, W]")
    channels, height, width = (int(d) for d in input_shape)
    expected = f"float32 [B, {channels}, {height}, {width}]"
    if images.ndim != 4:
        raise fail(f"the input has shape {list(images.shape)}, the model expects {expected}",
                   "stack the images into one batch [B, C, H, W] (add a batch axis for a single image)")
    if images.shape[1] != channels:
        raise fail(f"the input has {images.shape[1]} channels, the model expects {channels} ({expected})",
                   "convert the images to the model's channels (data.to_input does it for dataset images)")
    if tuple(images.shape[2:]) != (height, width):
        raise fail(f"the input is {images.shape[2]}x{images.shape[3]}, the model expects {height}x{width} "
                   f"({expected})", f"resize the images to {height}x{width}")
    if images.shape[0] == 0:
        raise fail("the input batch is empty", "pass at least one image")
    if images.dtype != np.float32:
        raise fail(f"the input is {images.dtype}, the model expects {expected}",
                   "normalise the images to float32 (data.to_input), e.g. images.astype(np.float32) for float64")
    bad = nonfinite_samples(images)
    if bad.size:
        raise NonFiniteInput(bad, images.shape[0])
    return np.ascontiguousarray(images)

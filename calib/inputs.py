"""Turn a calibration set's uint8 pixels into a model's input, through the same preprocessing as training.

Policy for images of another size: resize, with a one-line notice. The training and validation pipeline
(`pipeline.data.to_model_input`) resizes every dataset to `model.img_size` the same way, so a calibration set
resized by it is exactly what the model saw in training. What cannot be made to fit is refused: non-square images,
or channel counts other than 1 and 3.
"""
from __future__ import annotations

import sys
from typing import Sequence

import torch

from pipeline.data import to_model_input
from pipeline.errors import fail

from calib.sets import CalibSet


def model_inputs(cal: CalibSet, in_chans: int, img_size: int, mean: Sequence[float], std: Sequence[float],
                 quiet: bool = False) -> torch.Tensor:
    """float32 [N, in_chans, img_size, img_size], normalised like the model's training data."""
    images = cal.images
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise fail(f"calibration set {cal.folder} stores {images.dtype} images of shape {tuple(images.shape)}, "
                   "not uint8 [N, C, H, W]", "rebuild it with python -m calib build")
    _, channels, height, width = images.shape
    if height != width:
        raise fail(f"calibration set {cal.folder} has {height}x{width} images, but the model takes square "
                   f"{img_size}x{img_size} inputs", f"rebuild it square: python -m calib build ... --size {img_size}")
    if channels not in (1, 3):
        raise fail(f"calibration set {cal.folder} has {channels}-channel images", "use grey (1) or RGB (3) images")
    if height != img_size and not quiet:
        print(f"note: calibration images are {height}x{width}; resized to the model's {img_size}x{img_size} "
              "as in training (pipeline.data.to_model_input)", file=sys.stderr)
    return to_model_input(images, in_chans, img_size, mean, std)

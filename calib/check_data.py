"""Model inputs for an exported file, from its own metadata: the calibration set, and validation images to check on."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data import load_dataset, stratified_indices
from pipeline.export.metadata import ExportInfo

from calib.calibrate import check_set_matches
from calib.inputs import model_inputs
from calib.sets import CalibSet


def calibration_inputs(info: ExportInfo, cal: CalibSet) -> np.ndarray:
    """float32 [N, C, H, W]: the set through the preprocessing of the run that exported the file."""
    cfg = info.run_config()
    dataset = load_dataset(cfg.data, cfg.model)
    check_set_matches(cal, dataset)
    channels, size, _ = info.input_shape
    return model_inputs(cal, channels, size, dataset.mean, dataset.std).numpy()


def validation_inputs(info: ExportInfo, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified slice of the run's validation split (all of it for limit=0), as inputs and labels."""
    cfg = info.run_config()
    dataset = load_dataset(cfg.data, cfg.model)
    split = dataset.val
    if limit and limit < len(split):
        split = split.subset(stratified_indices(split.labels, limit, seed=0))
    images = dataset.to_input(split.raw(torch.arange(len(split))))
    return images.numpy().astype(np.float32), split.labels.numpy()

"""The images a bench calibrates thresholds on, times batches of and draws: real pictures, because how many tokens
an adaptive model keeps depends on what the image shows (random noise keeps a different number).

- `sample_photos`: scikit-image's bundled sample pictures (offline), square-cropped, then more crops and flips up
  to the count asked for, resized to the model's input size.
- `validation_images`: a stratified subset of the config's validation split (Fashion-MNIST for the default run).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import Config
from pipeline.data import IMAGENET_STATS, load_dataset, stratified_indices, to_model_input
from pipeline.errors import fail

# Bundled with scikit-image (no download): natural photos first, then textures and scientific images.
PHOTO_NAMES = ("astronaut", "camera", "cat", "coffee", "rocket", "coins", "clock", "horse", "moon", "page", "text",
               "hubble_deep_field", "immunohistochemistry", "retina", "grass", "gravel", "brick", "cell",
               "colorwheel", "logo")


@dataclass
class ImageSet:
    raw: torch.Tensor  # uint8 [N, C, S, S] at the model's input size, for drawing
    inputs: torch.Tensor  # float32 [N, in_chans, S, S], normalised: what the models see
    names: list[str]
    source: str  # in words, for reports

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def load_images(cfg: Config, kind: str, count: int, seed: int = 0) -> ImageSet:
    """`kind`: sample-photos or val."""
    if kind == "val":
        return validation_images(cfg, count, seed)
    return sample_photos(cfg, count, seed)


def photo_arrays() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [3, H, W]) for every bundled sample picture that loads here."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        try:
            array = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a picture that needs a download (pooch) or is missing in this version: skip it
            continue
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        photos.append((name, np.ascontiguousarray(array[..., :3].transpose(2, 0, 1)).astype(np.uint8)))
    if not photos:
        raise fail("none of scikit-image's sample pictures could be loaded", "pip install scikit-image>=0.22")
    return photos


def sample_photos(cfg: Config, count: int, seed: int = 0) -> ImageSet:
    """`count` images: each photo's centre square first, then random square crops (half to full side) and flips."""
    size, chans = cfg.model.img_size, cfg.model.in_chans
    photos = photo_arrays()
    rng = np.random.default_rng(seed)
    raw, names = [], []
    for i in range(count):
        name, array = photos[i % len(photos)]
        _, height, width = array.shape
        side = min(height, width)
        if i < len(photos):
            top, left, crop, flip = (height - side) // 2, (width - side) // 2, side, False
        else:
            crop = int(side * rng.uniform(0.5, 1.0))
            top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
            flip = bool(rng.integers(0, 2))
        patch = torch.from_numpy(array[:, top:top + crop, left:left + crop].copy())
        if flip:
            patch = patch.flip(-1)
        raw.append(_resize_uint8(patch, size))
        names.append(name if i < len(photos) else f"{name}#{i // len(photos)}")
    raw_t = torch.stack(raw)
    mean, std = _stats(cfg, chans)
    inputs = to_model_input(raw_t, chans, size, mean, std)
    if chans == 1:
        raw_t = raw_t.float().mean(1, keepdim=True).round().to(torch.uint8)
    return ImageSet(raw_t, inputs, names, f"scikit-image sample photos ({len(photos)} pictures, crops and flips "
                                          f"to {count}, resized to {size}x{size})")


def validation_images(cfg: Config, count: int, seed: int = 0) -> ImageSet:
    data = load_dataset(cfg.data, cfg.model)
    idx = stratified_indices(data.val.labels, count, seed)
    raw = data.val.raw(idx)
    inputs = data.to_input(raw)
    names = [f"{data.class_names[int(label)]}" for label in data.val.labels[idx]]
    shown = F.interpolate(raw.float(), size=(cfg.model.img_size,) * 2, mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8) \
        if raw.shape[-1] != cfg.model.img_size else raw
    return ImageSet(shown, inputs, names, f"{cfg.data.dataset} validation split ({len(idx)} images, stratified)")


def _resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _stats(cfg: Config, chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.data.mean is not None:
        return tuple(cfg.data.mean), tuple(cfg.data.std)
    mean, std = IMAGENET_STATS
    if chans == 3:
        return mean, std
    return (float(np.mean(mean)),) * chans, (float(np.mean(std)),) * chans

"""Datasets: Fashion-MNIST from Debian's idx files, or any ImageFolder; deterministic splits; batches.

Images stay uint8 until a batch is drawn; the batch is then converted to the model's channels and size and
normalised, so one dataset serves a 28x28 grey model and a 224x224 RGB one.
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DataConfig, ModelConfig
from pipeline.errors import fail

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
INSTALL_HINT = ("as root run `apt-get install dataset-fashion-mnist` (make setup does this), "
                "or set data.root to a folder holding the four *-ubyte.gz files")


@dataclass
class Split:
    """One split of a dataset: labels plus uint8 images held in memory or decoded from files on demand."""

    labels: torch.Tensor  # int64 [N]
    ids: list[str]  # stable per-image ids (file index or relative path), for manifests
    images: Optional[torch.Tensor] = None  # uint8 [N, C, H, W]
    paths: Optional[list[Path]] = None
    decode_size: int = 224  # files are decoded straight to this square size, so a batch stacks

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "Split":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Split(
            labels=self.labels[idx], ids=[self.ids[i] for i in idx.tolist()],
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            decode_size=self.decode_size,
        )

    def raw(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """uint8 images [n, C, H, W] as stored (files are decoded and must share one size)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            return self.images[idx]
        with ThreadPoolExecutor(max_workers=4) as pool:
            arrays = list(pool.map(lambda p: decode_image(p, self.decode_size), [self.paths[i] for i in idx.tolist()]))
        return torch.stack([torch.from_numpy(a) for a in arrays])

    def content_hash(self, index: int) -> str:
        """sha256 of an image's bytes (the file for ImageFolder, the pixels for idx data)."""
        if self.paths is not None:
            return hashlib.sha256(self.paths[index].read_bytes()).hexdigest()
        return hashlib.sha256(self.images[index].numpy().tobytes()).hexdigest()


@dataclass
class Dataset:
    """Train and validation splits plus how to turn their pixels into model inputs."""

    train: Split
    val: Split
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int
    in_chans: int
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_input(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 [n, c, h, w] -> float [n, in_chans, img_size, img_size], normalised."""
        return to_model_input(raw, self.in_chans, self.img_size, self.mean, self.std)

    def batches(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels); with `world` > 1 each rank takes its own interleaved share (DDP)."""
        for index in self.batch_indices(split, batch_size, shuffle, seed, epoch, rank, world, drop_last):
            yield self.batch(split, index)

    def batch_indices(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                      rank: int = 0, world: int = 1, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """The split's indices of each batch `batches` yields, in its order."""
        order = torch.arange(len(split))
        if shuffle:
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order[rank::world]
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield order[start:start + batch_size]

    def batch(self, split: Split, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the split's images at `index`: a pure function of the indices, with no random
        augmentation, so a training image is the same input every epoch."""
        return self.to_input(split.raw(index)), split.labels[index]


def to_model_input(raw: torch.Tensor, in_chans: int, img_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    x = raw.float().div_(255.0)
    if x.shape[1] != in_chans:
        x = x.mean(dim=1, keepdim=True) if in_chans == 1 else x[:, :1].expand(-1, in_chans, -1, -1)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def load_dataset(data: DataConfig, model: ModelConfig) -> Dataset:
    """Load the configured dataset and make its deterministic train/val splits."""
    if data.dataset == "fashion-mnist":
        train, val = (_fashion_mnist_split(Path(data.root), name) for name in ("train", "val"))
        names, stats = FASHION_MNIST_CLASSES, FASHION_MNIST_STATS
    else:
        train, val, names = _image_folder(Path(data.root), data.val_fraction, data.split_seed)
        train.decode_size = val.decode_size = model.img_size
        stats = IMAGENET_STATS
    if len(names) != model.num_classes:
        raise fail(f"the dataset has {len(names)} classes but model.num_classes={model.num_classes}",
                   f"set model.num_classes={len(names)}")
    if data.train_limit:
        train = train.subset(stratified_indices(train.labels, data.train_limit, data.split_seed))
    if data.val_limit:
        val = val.subset(stratified_indices(val.labels, data.val_limit, data.split_seed))
    mean, std = (data.mean, data.std) if data.mean is not None else _stats_for(stats, model.in_chans)
    if len(mean) != model.in_chans or len(std) != model.in_chans:
        raise fail(f"data.mean/std have {len(mean)} values but the model has {model.in_chans} channels",
                   "give one mean and std per input channel")
    return Dataset(train, val, tuple(names), tuple(mean), tuple(std), model.img_size, model.in_chans)


def _stats_for(stats: tuple[tuple[float, ...], tuple[float, ...]], in_chans: int) -> tuple[tuple, tuple]:
    mean, std = stats
    if len(mean) == in_chans:
        return mean, std
    if len(mean) == 1:
        return mean * in_chans, std * in_chans
    return (float(np.mean(mean)),) * in_chans, (float(np.mean(std)),) * in_chans


def stratified_indices(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A deterministic subset of `count` indices with the classes in their original proportions."""
    if count < 0:
        raise ValueError(f"a subset of {count} images: callers check counts before asking")
    count = min(count, len(labels))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    # Sort the shuffled order by class, then deal round-robin so every prefix is balanced.
    by_class = [order[labels[order] == c] for c in torch.unique(labels)]
    ranks = torch.cat([torch.arange(len(idx)).float() / len(idx) for idx in by_class])
    pool = torch.cat(by_class)
    return pool[torch.argsort(ranks, stable=True)][:count].sort().values


# ---- Fashion-MNIST (idx) -----------------------------------------------------------------------------------
def _fashion_mnist_split(root: Path, name: str) -> Split:
    image_file, label_file = (root / f for f in FASHION_MNIST_FILES[name])
    for path in (image_file, label_file):
        if not path.is_file():
            raise fail(f"Fashion-MNIST file {path} is missing", INSTALL_HINT)
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
        raise fail(f"{image_file.name} and {label_file.name} do not form a dataset "
                   f"(images {tuple(images.shape)}, labels {tuple(labels.shape)})", INSTALL_HINT)
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise fail(f"{label_file} has label {int(labels.max())}, Fashion-MNIST has 10 classes", INSTALL_HINT)
    return Split(labels=torch.from_numpy(labels.astype(np.int64)), ids=[f"{name}:{i}" for i in range(len(labels))],
                 images=torch.from_numpy(images.copy())[:, None])


def read_idx(path: Path) -> np.ndarray:
    """Parse an (optionally gzipped) idx file: magic 0x0000 08 NDIM, big-endian dims, then uint8 data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise fail(f"{path} is not a readable idx file ({exc})", INSTALL_HINT) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise fail(f"{path} is not an idx file of unsigned bytes", INSTALL_HINT)
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise fail(f"{path} is truncated (header)", INSTALL_HINT)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise fail(f"{path} holds {len(data) - header} bytes of data, its header promises {expected}", INSTALL_HINT)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# ---- ImageFolder ---------------------------------------------------------------------------------------------
def _image_folder(root: Path, val_fraction: float, seed: int) -> tuple[Split, Split, list[str]]:
    if not root.is_dir():
        raise fail(f"image folder {root} does not exist", "set data.root to a folder with one sub-folder per class")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, names = _scan_folder(root / "train", root)
        val, val_names = _scan_folder(root / "val", root, names)
        return train, val, names
    split, names = _scan_folder(root, root)
    generator = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in range(len(names)):
        members = (split.labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_idx.append(members[: max(1, int(round(len(members) * val_fraction)))] if len(members) > 1 else members[:0])
    val_idx = torch.cat(val_idx).sort().values
    is_val = torch.zeros(len(split), dtype=torch.bool)
    is_val[val_idx] = True
    return split.subset((~is_val).nonzero().flatten()), split.subset(val_idx), names


def _scan_folder(folder: Path, root: Path, names: Optional[list[str]] = None) -> tuple[Split, list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if names is not None and classes != names:
        raise fail(f"{folder} has classes {classes[:5]}.. but the train folder has {names[:5]}..",
                   "give train/ and val/ the same class sub-folders")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise fail(f"no images found under {folder}", "put images (png/jpg/...) in one sub-folder per class")
    if len(classes) < 2:
        raise fail(f"{folder} has {len(classes)} class folder(s)", "a classifier needs at least two class folders")
    decode_image(paths[0], 8)  # fail now, with the file's name, if the first image is unreadable
    return Split(labels=torch.tensor(labels), ids=[str(p.relative_to(root)) for p in paths], paths=paths), classes


def decode_image(path: Path, side: int) -> np.ndarray:
    """Decode to uint8 [3, side, side] RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((side, side), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise fail(f"image {path} cannot be decoded ({type(exc).__name__})", "remove or replace the corrupt file") from None

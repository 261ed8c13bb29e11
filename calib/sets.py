"""Build, store and load calibration sets: a stratified, deterministic sample of a dataset's train split.

A set is a folder holding `manifest.json` and `images.npz` (uint8 pixels [N, C, H, W] plus labels). The pixels are
stored, not re-read from the source, because an ImageFolder changes under you and Fashion-MNIST is an install
away on another machine: the array makes a set self-contained and byte-exact, and compressed it stays small
(200 Fashion-MNIST images: ~100 KB). Images are never committed; `python -m calib build-default` (run by `make
setup`) recreates the default set, identical down to its manifest id.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.artifacts import atomic_path
from pipeline.config import DataConfig, ModelConfig
from pipeline.data import FASHION_MNIST_CLASSES, IMAGE_SUFFIXES, Split, decode_image, load_dataset
from pipeline.errors import fail

from calib.manifest import Entry, Manifest, read_manifest, write_manifest

ARRAYS_FILE = "images.npz"
SETS_DIR = Path(__file__).resolve().parent / "sets"
DEFAULT_NAME = "fmnist-default"
DEFAULT_PER_CLASS = 20
DEFAULT_SEED = 0
DEFAULT_FMNIST_ROOT = DataConfig().root


@dataclass(frozen=True)
class CalibSet:
    """A loaded calibration set: its manifest and its uint8 images [N, C, H, W] with labels [N]."""

    manifest: Manifest
    images: torch.Tensor
    labels: torch.Tensor
    folder: Path

    def __len__(self) -> int:
        return int(self.labels.numel())

    def describe(self) -> dict:
        """What a summary or ONNX metadata records about the set used."""
        m = self.manifest
        return {"name": m.name, "id": m.id, "digest": m.digest, "images": len(self), "per_class": m.per_class,
                "seed": m.seed, "source": m.source, "path": str(self.folder)}


# ---- selection -------------------------------------------------------------------------------------------------
def stratified_pick(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Up to `per_class` indices of every class, chosen by one seeded permutation; sorted, so order never depends
    on the class count or on Python's hash seed."""
    if per_class < 1:
        raise fail(f"--per-class {per_class} must be at least 1", "use e.g. --per-class 20")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picked = [order[labels[order] == c][:per_class] for c in torch.unique(labels)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


def check_classes(labels: torch.Tensor, where: str) -> None:
    """A calibration set needs images of at least two classes: thresholds fitted to one class do not transfer."""
    if labels.numel() == 0:
        raise fail(f"calibration set {where} has no images", "point it at a dataset or image folder that has images")
    present = torch.unique(labels)
    if len(present) < 2:
        raise fail(f"calibration set {where} holds images of one class only (label {int(present[0])}), and token "
                   "thresholds fitted to one class do not transfer", "build it from at least two classes")


# ---- building --------------------------------------------------------------------------------------------------
def build_from_split(split: Split, classes: list[str], per_class: int, seed: int, name: str,
                     source: dict) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """Pick a stratified subset of an in-memory split; returns the manifest and the arrays to store."""
    check_classes(split.labels, name)
    idx = stratified_pick(split.labels, per_class, seed)
    chosen = split.subset(idx)
    images = chosen.raw(torch.arange(len(chosen))).numpy()
    labels = chosen.labels.numpy().astype(np.int64)
    entries = [Entry(chosen.ids[i], int(labels[i]), chosen.content_hash(i)) for i in range(len(chosen))]
    return _manifest(name, source, seed, per_class, classes, images, labels, entries), images, labels


def build_fashion_mnist(root: str = DEFAULT_FMNIST_ROOT, per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED,
                        name: str = DEFAULT_NAME) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """From Fashion-MNIST's train split, so the validation split the reports use never sees calibration."""
    data = load_dataset(DataConfig(dataset="fashion-mnist", root=str(root)), ModelConfig(num_classes=10))
    source = {"kind": "fashion-mnist", "root": str(root), "split": "train"}
    return build_from_split(data.train, list(FASHION_MNIST_CLASSES), per_class, seed, name, source)


def build_image_folder(root: str | Path, size: int, per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED,
                       name: Optional[str] = None) -> tuple[Manifest, np.ndarray, np.ndarray]:
    """From an ImageFolder (one sub-folder per class; `train/` if it has train/ and val/), decoded to RGB at
    size x size like the training pipeline does. Only the chosen files are decoded."""
    root = Path(root)
    folder = root / "train" if (root / "train").is_dir() and (root / "val").is_dir() else root
    if not folder.is_dir():
        raise fail(f"image folder {root} does not exist", "pass a folder with one sub-folder of images per class")
    if size < 1:
        raise fail(f"--size {size} must be positive", "use the model's model.img_size, e.g. --size 224")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (folder / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    name = name or root.name
    check_classes(torch.tensor(labels, dtype=torch.long), f"{name} ({folder})")
    idx = stratified_pick(torch.tensor(labels), per_class, seed).tolist()
    images = np.stack([decode_image(paths[i], size) for i in idx]) if idx else np.zeros((0, 3, size, size), np.uint8)
    picked = np.asarray([labels[i] for i in idx], dtype=np.int64)
    entries = [Entry(str(paths[i].relative_to(root)), labels[i], hashlib.sha256(paths[i].read_bytes()).hexdigest())
               for i in idx]
    source = {"kind": "imagefolder", "root": str(root.resolve()), "split": folder.name, "decoded_size": size}
    return _manifest(name, source, seed, per_class, classes, images, picked, entries), images, picked


def _manifest(name: str, source: dict, seed: int, per_class: int, classes: list[str], images: np.ndarray,
              labels: np.ndarray, entries: list[Entry]) -> Manifest:
    return Manifest(name=name, source=source, seed=seed, per_class=per_class, classes=list(classes),
                    image_shape=list(images.shape[1:]), arrays_file=ARRAYS_FILE,
                    arrays_sha256=arrays_digest(images, labels), entries=entries)


def arrays_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the pixels, their shape and the labels: independent of how the .npz file is zipped."""
    h = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels.astype("<i8")).tobytes())
    return h.hexdigest()


# ---- storing and loading ---------------------------------------------------------------------------------------
def save_set(folder: str | Path, manifest: Manifest, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write the arrays, then the manifest (atomically each), so a manifest never points at missing pixels."""
    folder = Path(folder)
    with atomic_path(folder / ARRAYS_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=images, labels=labels)
    write_manifest(folder, manifest)
    return folder


def resolve_set(spec: str | Path | None) -> Path:
    """A set folder from a CLI value: a folder, its manifest.json, 'default' or None (the default set)."""
    if spec is None or str(spec) == "default":
        return SETS_DIR / DEFAULT_NAME
    path = Path(spec)
    return path.parent if path.name == "manifest.json" else path


def load_set(spec: str | Path | None) -> CalibSet:
    """Load a set and verify it: its arrays must hash to the manifest's digest and hold two classes or more."""
    folder = resolve_set(spec)
    if spec is None or str(spec) == "default":
        if not (folder / "manifest.json").is_file():
            raise fail(f"the default calibration set {folder} has not been built",
                       "run `python -m calib build-default` (make setup does it), or pass --calib-set DIR")
    manifest = read_manifest(folder)
    arrays = folder / manifest.arrays_file
    try:
        with np.load(arrays) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise fail(f"{arrays} cannot be read ({type(exc).__name__})", f"rebuild the set into {folder}") from None
    if arrays_digest(images, labels) != manifest.arrays_sha256:
        raise fail(f"{arrays} does not match its manifest (sha256 differs)", f"rebuild the set into {folder}")
    if len(labels) != len(manifest.entries):
        raise fail(f"{folder} lists {len(manifest.entries)} images but stores {len(labels)}", "rebuild the set")
    labels_t = torch.from_numpy(labels.astype(np.int64))
    check_classes(labels_t, str(folder))
    return CalibSet(manifest, torch.from_numpy(images), labels_t, folder)

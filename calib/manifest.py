"""The manifest of a calibration set: what is in it, where it came from, and hashes that prove it is unchanged.

The manifest is plain JSON next to the pixel array, so a set can be reviewed, diffed and cited (its `id`) without
loading any image. The id hashes only what defines the set (source, seed, ids, labels, content hashes), so two
builds of the same set have the same id on any machine.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import write_json
from pipeline.errors import fail

FORMAT = "tokengate-calib-set"
VERSION = 1
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Entry:
    """One image: a stable id in its source, its class, and the sha256 of its source bytes."""

    id: str
    label: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything that defines a calibration set; `arrays_sha256` covers the stored pixels and labels."""

    name: str
    source: dict[str, Any]  # {"kind": "fashion-mnist" | "imagefolder", "root": ..., "split": ...}
    seed: int
    per_class: int
    classes: list[str]
    image_shape: list[int]  # [C, H, W] of the stored uint8 images
    arrays_file: str
    arrays_sha256: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        """Images per class, in class order."""
        counts = [0] * len(self.classes)
        for entry in self.entries:
            counts[entry.label] += 1
        return counts

    @property
    def digest(self) -> str:
        """sha256 of the set's defining content (not of the file, whose layout may change)."""
        source = {k: v for k, v in self.source.items() if k != "root"}  # the same set found elsewhere is the same set
        content = {"source": source, "seed": self.seed, "classes": self.classes,
                   "entries": [[e.id, e.label, e.sha256] for e in self.entries]}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    @property
    def id(self) -> str:
        """A short citation for reports: the set's name and the first 12 hex digits of its digest."""
        return f"{self.name}@{self.digest[:12]}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entries"] = [asdict(e) for e in self.entries]
        return {"format": FORMAT, "version": VERSION, "id": self.id, "digest": self.digest, "counts": self.counts,
                **data}


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_FILE
    write_json(path, manifest.to_dict())
    return path


def read_manifest(folder: Path) -> Manifest:
    """Read and check a manifest; a missing, foreign or edited one is refused with its fix."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise fail(f"{folder} is not a calibration set (no {MANIFEST_FILE})",
                   "build one: python -m calib build-default, or python -m calib build --image-folder DIR --out DIR")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise fail(f"{path} is not valid JSON", f"rebuild the set into {folder}") from None
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise fail(f"{path} is not a version-{VERSION} TokenGate calibration manifest",
                   f"rebuild the set into {folder}")
    try:
        entries = [Entry(str(e["id"]), int(e["label"]), str(e["sha256"])) for e in data["entries"]]
        keys = ("name", "source", "seed", "per_class", "classes", "image_shape", "arrays_file", "arrays_sha256")
        manifest = Manifest(**{k: data[k] for k in keys}, entries=entries)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"{path} is incomplete ({type(exc).__name__}: {exc})", f"rebuild the set into {folder}") from None
    if data.get("digest") != manifest.digest:
        raise fail(f"{path} was edited: its entries no longer match its digest", f"rebuild the set into {folder}")
    return manifest

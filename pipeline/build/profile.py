"""The engine's one optimization profile: the batch range of input `images` [B, C, H, W], and batches that miss it."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import fail

DEFAULT_BATCH = "1,32,128"


@dataclass(frozen=True)
class BatchProfile:
    """min <= opt <= max: TensorRT accepts any batch in [min, max] and tunes its kernels for opt."""

    min: int
    opt: int
    max: int

    def shapes(self, chw: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for `set_shape`."""
        return tuple((b, *chw) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def check(self, batch: int, engine: str = "the engine") -> None:
        """Refuse a batch outside [min, max], saying the range and how to get around it."""
        if self.min <= batch <= self.max:
            return
        if batch > self.max:
            raise fail(f"batch {batch} is outside the profile of {engine}, which takes batches {self.min} to "
                       f"{self.max}", f"split it into chunks of at most {self.max} (TensorRTRunner(..., "
                       f"auto_chunk=True) does that, or pipeline.build.profile.chunks), or rebuild with "
                       f"--batch {self.min},{min(max(self.opt, batch // 2), batch)},{batch}")
        raise fail(f"batch {batch} is below the profile of {engine}, which takes batches {self.min} to {self.max}",
                   f"pad the batch to {self.min} images, or rebuild with --batch {batch},{self.opt},{self.max}")

    def plan(self, batch: int, auto_chunk: bool, engine: str = "the engine") -> list[slice]:
        """The slices of a batch to run: the whole batch, or chunks of at most max when auto_chunk allows it."""
        if auto_chunk and batch > self.max:
            parts = chunks(batch, self.max, self.min)
            for part in parts:  # only a profile with min close to max can leave a chunk it cannot take
                self.check(part.stop - part.start, engine)
            return parts
        self.check(batch, engine)
        return [slice(0, batch)]


def parse_batch(text: str) -> BatchProfile:
    """`MIN,OPT,MAX` (or one size B for a fixed batch) -> BatchProfile, with a clear error for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise fail(f"--batch {text!r} is not MIN,OPT,MAX", "write three batch sizes, e.g. --batch 1,32,128") from None
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3:
        raise fail(f"--batch {text!r} has {len(sizes)} sizes", "write MIN,OPT,MAX, e.g. --batch 1,32,128")
    low, opt, high = sizes
    if low < 1 or not low <= opt <= high:
        raise fail(f"--batch {text!r} is not 1 <= MIN <= OPT <= MAX", "e.g. --batch 1,32,128")
    return BatchProfile(low, opt, high)


def chunks(batch: int, max_batch: int, min_batch: int = 1) -> list[slice]:
    """Slices covering range(batch) in order, each of min_batch..max_batch rows: a big batch on a small profile.

    Full chunks of max_batch, except when the last one would fall below min_batch: then the last two share the rest.
    """
    if batch < min_batch or not 1 <= min_batch <= max_batch:
        raise ValueError(f"cannot cut {batch} rows into chunks of {min_batch} to {max_batch}")
    sizes = [max_batch] * (batch // max_batch) + ([batch % max_batch] if batch % max_batch else [])
    if sizes[-1] < min_batch:  # batch > max_batch here, as a single short chunk would have failed above
        pair = sizes[-2] + sizes[-1]
        sizes[-2:] = [pair - pair // 2, pair // 2]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]

"""`tokengate bench`'s options and their defaults, in a module that imports nothing heavy: the CLI reads its
defaults here without loading PyTorch, and the tools that time as the bench does share them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TURNS = ("batch", "pool")  # how the timed files take turns (`timing.run_rounds`)


@dataclass(frozen=True)
class BenchOptions:
    """What `tokengate bench` times, how, and where it writes (the CLI's flags, one field each)."""

    runtime: str = "ort-cpu"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    rounds: int = 10
    # sessions of each file, taking turns round by round (`timing.run_rounds`): a small model's speed moves with
    # its session
    sessions: int = 3
    # "batch": the files take turns batch by batch; "pool": each runs a round's batches back to back (timing.run_rounds)
    turns: str = "batch"
    flavors: Optional[tuple[str, ...]] = None  # default: every flavor the runtime runs (run.RUNTIME_FLAVORS)
    run_root: Path = Path("runs") / "bench"  # where configs become run directories
    threads: int = 0
    warmup_s: float = 1.0
    images: Optional[int] = None  # pool size (every round times all of it); default: bench.num_images, 256 for a run
    top1: bool = True  # top-1 of every file on the validation split (trained runs)
    top1_limit: int = 0  # 0 = the whole validation split
    overrides: tuple[str, ...] = ()  # KEY=VALUE over a config target (its run directory is written with them)
    selection_share: bool = False  # also time TokenSelect's share of run time (ONNX Runtime CPU; slow)
    # baseline files of the run to time beside the flavors (e.g. "baseline.tome.onnx", `calib.tome_export`): checked
    # against PyTorch when they were written, their MACs read from their metadata
    baselines: tuple[str, ...] = ()
    profile_runs: int = 8  # batches per flavor and batch size that the selection share averages over
    show: bool = True

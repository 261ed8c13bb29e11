"""What `tokengate bench` / `visualize` were pointed at: a trained run directory, or a YAML config (random or
checkpoint weights) whose `bench:` section (pipeline.config.BenchConfig) says how to derive the run that is timed
(pipeline/bench/prepare.py): the teacher, and a student sliced and thresholded as follows.
    keep_ratios: [0.7, 0.49, 0.34]  # cumulative share of patch tokens kept after each token stage
    heads_fraction: 0.75            # the student's static structure: heads kept per layer
    mlp_fraction: 0.75              # ... and MLP hidden channels kept per layer
    images: sample-photos           # visualize's images for a config: sample-photos (scikit-image) or val (data.*)
    num_images: 96                  # how many photos (cropped and flipped to reach the count)
    seed: 0                         # random weights and crops
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from pipeline.config import BenchConfig, Config, load_config, load_run_config
from pipeline.errors import fail


@dataclass(frozen=True)
class Target:
    name: str
    source: Path
    cfg: Config
    spec: BenchConfig
    run_dir: Optional[Path]  # a trained run; None for a config

    @property
    def random_weights(self) -> bool:
        return self.run_dir is None and not self.cfg.model.checkpoint and not self.cfg.model.pretrained


def load_target(path: str | Path, overrides: tuple[str, ...] = ()) -> Target:
    """A run directory (config.json + checkpoints) or a YAML config file."""
    path = Path(path)
    if path.is_dir():
        cfg = load_run_config(path)
        if overrides:
            cfg = cfg.with_overrides(overrides)
        spec = replace(cfg.bench, images="val")  # a trained run brings its own data
        return Target(name=path.name, source=path, cfg=cfg, spec=spec, run_dir=path)
    if not path.is_file():
        raise fail(f"{path} is neither a run directory nor a config file",
                   "pass runs/NAME (after `tokengate train`) or a YAML config such as configs/deit-s-224.yaml")
    cfg = load_config(path, overrides)  # YAML or JSON (a subset of YAML); refuses a file that is not a mapping
    return Target(name=cfg.name, source=path, cfg=cfg, spec=cfg.bench, run_dir=None)

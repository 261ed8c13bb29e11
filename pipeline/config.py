"""The one config object that flows through every stage.

Frozen dataclasses loaded from YAML, with `--set a.b=c` overrides. Unknown keys, wrong types and out-of-range
values are refused with a message that names the key and the fix, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, get_args, get_origin

import yaml

from pipeline.errors import TokenGateError, fail


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split."""

    dataset: Literal["fashion-mnist", "imagefolder"] = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    val_fraction: float = 0.1  # imagefolder only: Fashion-MNIST uses its official test set as validation
    split_seed: int = 0
    train_limit: int = 0  # 0 = all images; a positive number takes a deterministic stratified subset
    val_limit: int = 0
    mean: Optional[tuple[float, ...]] = None  # None = the dataset's default normalisation
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise fail(f"data.val_fraction={self.val_fraction} is outside (0, 1)", "pick e.g. data.val_fraction=0.1")
        if self.train_limit < 0 or self.val_limit < 0:
            raise fail("data.train_limit/val_limit is negative", "use 0 for all images or a positive count")
        if (self.mean is None) != (self.std is None):
            raise fail("data.mean and data.std must be given together", "set both or neither")


@dataclass(frozen=True)
class ModelConfig:
    """A timm ViT plus the geometry overrides that make it fit the data."""

    arch: str = "vit_tiny_patch16_224"
    img_size: int = 28
    in_chans: int = 1
    num_classes: int = 10
    patch_size: Optional[int] = None  # None = the architecture's own value
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    checkpoint: Optional[str] = None  # a dense teacher checkpoint (.safetensors/.pth) to start from
    pretrained: bool = False  # timm's pretrained=True: needs network access to the hub

    def __post_init__(self) -> None:
        for name in ("img_size", "in_chans", "num_classes"):
            if getattr(self, name) < 1:
                raise fail(f"model.{name}={getattr(self, name)} must be positive", f"set model.{name} to a positive int")
        if self.patch_size is not None and self.img_size % self.patch_size:
            raise fail(
                f"model.img_size={self.img_size} is not divisible by model.patch_size={self.patch_size}",
                "pick an image size that is a multiple of the patch size",
            )


@dataclass(frozen=True)
class GatesConfig:
    """Token gates (AS-ViT) and structural gates (USDC)."""

    token_stages: Optional[tuple[int, ...]] = None  # 0-based block indices pruned before; None = depth/4, /2, 3/4
    init_threshold: float = 0.5  # on the relative score (1.0 = a token's share equals the uniform share)
    tau: float = 0.1  # temperature of the soft mask sigmoid((score - threshold) / tau)
    min_keep: int = 1  # patch tokens always kept per stage
    static: bool = True  # learn head / MLP-channel / block gates and slice them out
    static_init: float = 2.0  # initial gate logit (positive = open)
    dynamic: Literal["none", "group"] = "none"
    # What becomes of a pruned token. discard: it leaves the network (AS-ViT, DynamicViT). context: it stops being
    # updated but stays a key and value of every later attention (`pipeline.models.layers.Context`): it costs its K/V
    # projection and one attention column per layer, and keeps what a model trained on every token reads from it.
    dropped_tokens: Literal["discard", "context"] = "discard"
    # A merge stage before this block (0-based; before the first token stage): every other patch token whose cosine
    # similarity to its closest neighbour of the other half exceeds a threshold is averaged into it, and later
    # attention weighs each row by the tokens it stands for (pipeline.models.token_ops.bipartite_keep_scores).
    # Training-free: `tokengate calibrate` fits its threshold with the others; null = no merge stage.
    merge_block: Optional[int] = None
    # Sub-group split modes for dynamic gates: stage 2 is trained once per mode (the first is the main student).
    subgroup_split: tuple[Literal["none", "uniform", "random", "recursive"], ...] = ("recursive",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.init_threshold <= MAX_THRESHOLD:
            raise fail(
                f"gates.init_threshold={self.init_threshold} is outside [0, {MAX_THRESHOLD}]",
                "thresholds act on relative scores where 1.0 is a uniform share; use e.g. 0.5",
            )
        if self.tau <= 0:
            raise fail(f"gates.tau={self.tau} must be positive", "use e.g. gates.tau=0.1")
        if self.min_keep < 1:
            raise fail(f"gates.min_keep={self.min_keep} must be at least 1", "set gates.min_keep=1")
        if not self.subgroup_split or len(set(self.subgroup_split)) != len(self.subgroup_split):
            raise fail(f"gates.subgroup_split={list(self.subgroup_split)} must list distinct modes",
                       "e.g. [recursive] or [recursive, none]")
        if self.merge_block is not None and self.merge_block < 0:
            raise fail(f"gates.merge_block={self.merge_block} is negative", "use 0 (merge before the first block) or null")
        if self.token_stages is not None and list(self.token_stages) != sorted(set(self.token_stages)):
            raise fail(f"gates.token_stages={list(self.token_stages)} must be strictly increasing", "e.g. [3, 6, 9]")


MAX_THRESHOLD = 100.0


@dataclass(frozen=True)
class BudgetConfig:
    """The FLOPs budget: the student's mean GFLOPs as a fraction of the dense teacher's."""

    target: float = 0.45
    # The static structure alone (every token kept) may cost at most this fraction: USDC's upper bound on memory and
    # compute. Without it the budget is met almost only by tokens, which are cheaper to drop, and nothing shrinks.
    static_target: Optional[float] = None
    weight: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise fail(f"budget.target={self.target} is outside (0, 1]", "give a fraction of dense GFLOPs, e.g. 0.6")
        if self.static_target is not None and not self.target <= self.static_target <= 1.0:
            raise fail(f"budget.static_target={self.static_target} is outside [budget.target, 1]",
                       "the static structure cannot cost less than the whole budget; use e.g. 0.65 or null")
        if self.weight < 0:
            raise fail(f"budget.weight={self.weight} is negative", "use a weight >= 0")


@dataclass(frozen=True)
class PhaseConfig:
    """One optimisation phase."""

    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.05
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise fail(f"phase {self} has an out-of-range value",
                       "use epochs >= 0, batch_size >= 1, lr > 0, weight_decay >= 0, warmup_steps >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Teacher, then stage 1 (search + slice), then stage 2 (fine-tune) of the student."""

    teacher: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=3, lr=2e-3))
    search: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=1, lr=5e-4))
    finetune: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=1, lr=5e-4))
    gate_lr: float = 0.05  # static and group gate logits learn much faster than weights
    threshold_lr: float = 0.02
    kd_weight: float = 1.0
    kd_temperature: float = 2.0
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int = 0  # 0 = all cores
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        positive = {"gate_lr": self.gate_lr, "threshold_lr": self.threshold_lr, "kd_temperature": self.kd_temperature,
                    "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not value > 0:
                raise fail(f"train.{name}={value} must be positive", f"set train.{name} as in configs/fmnist-tiny.yaml")
        if self.kd_weight < 0 or self.threads < 0:
            raise fail(f"train.kd_weight={self.kd_weight} and train.threads={self.threads} must not be negative",
                       "use kd_weight >= 0 (0 = no distillation) and threads >= 0 (0 = all cores)")
        if not 0 <= self.label_smoothing < 1:
            raise fail(f"train.label_smoothing={self.label_smoothing} is outside [0, 1)", "e.g. 0.1, or 0 for none")


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export settings."""

    opset: int = 20
    # capped flavor: K per stage = this quantile of kept counts on validation data. 0.99 kept the default run's top-1
    # at every measured quantile down to 0.95 and truncates 0.85% of its images, for most of the speed that lower
    # caps give (docs/results.md, python -m tools.capped_quantiles)
    capped_quantile: float = 0.99
    # where those kept counts come from: the validation split, or (runs that `tokengate bench CONFIG` writes for a
    # config without data) the bench's sample photos, bench.num_images of them
    caps_images: Literal["val", "sample-photos"] = "val"

    def __post_init__(self) -> None:
        if not 0.0 < self.capped_quantile <= 1.0:
            raise fail(f"export.capped_quantile={self.capped_quantile} outside (0, 1]", "use 1.0 for the max")


@dataclass(frozen=True)
class ValidateConfig:
    """Cross-batch validation and its tolerances."""

    batch_sizes: tuple[int, ...] = (1, 2, 7, 32, 64)
    tol_vs_torch: float = 1e-4
    tol_vs_b1: float = 1e-5
    max_flips: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise fail(f"validate.batch_sizes={list(self.batch_sizes)} must be positive", "e.g. [1, 2, 7, 32, 64]")
        if self.tol_vs_torch < 0 or self.tol_vs_b1 < 0 or self.max_flips < 0:
            raise fail("a validate tolerance is negative", "tolerances are bounds on |difference|: use values >= 0")


@dataclass(frozen=True)
class BenchConfig:
    """How `tokengate bench` turns a config (not a trained run) into a run directory: the teacher, and a student
    sliced to these fractions with thresholds fitted to these keep ratios (pipeline/bench/prepare.py)."""

    keep_ratios: tuple[float, ...] = (0.7, 0.49, 0.34)  # cumulative share of patch tokens kept after each stage
    heads_fraction: float = 0.75  # the student: attention heads kept per layer
    mlp_fraction: float = 0.75  # ... and MLP hidden channels kept per layer
    # `tokengate visualize`'s images for a config; the bench times a config's run on the sample photos its
    # thresholds were fitted on, and a trained run on its validation split
    images: Literal["sample-photos", "val"] = "sample-photos"
    num_images: int = 96
    seed: int = 0  # random weights and crops

    def __post_init__(self) -> None:
        ratios = list(self.keep_ratios)
        if not ratios or any(not 0 < r <= 1 for r in ratios) or ratios != sorted(ratios, reverse=True):
            raise fail(f"bench.keep_ratios={ratios} must be non-increasing shares in (0, 1]", "e.g. [0.7, 0.49, 0.34]")
        for name in ("heads_fraction", "mlp_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise fail(f"bench.{name}={getattr(self, name)} is outside (0, 1]", f"e.g. bench.{name}: 0.75")
        if self.num_images < 1:
            raise fail(f"bench.num_images={self.num_images} must be positive", "e.g. bench.num_images: 96")


@dataclass(frozen=True)
class Config:
    """Everything a run needs; written to runs/NAME/config.json."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def with_overrides(self, assignments: Sequence[str]) -> "Config":
        """Apply `a.b=c` assignments; values are parsed as YAML scalars/lists."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise fail(f"--set {item!r} is not of the form key=value", "write e.g. --set train.teacher.epochs=3")
            _assign(data, key.strip().split("."), yaml.safe_load(raw), key.strip())
        return config_from_dict(data)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _assign(data: dict[str, Any], path: list[str], value: Any, full_key: str) -> None:
    node = data
    for depth, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            known = sorted(node) if isinstance(node, dict) else []
            raise _unknown_key(".".join(path[: depth + 1]), known)
        if depth == len(path) - 1:
            node[part] = value
        else:
            node = node[part]


def _unknown_key(key: str, known: Sequence[str]) -> TokenGateError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(known)}"
    return fail(f"unknown config key {key!r}", hint)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a Config, refusing unknown keys and values of the wrong type."""
    return _build(Config, data, prefix="")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise fail(f"config section {prefix or '<root>'!r} is not a mapping", "check the YAML indentation")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(f"{prefix}{key}", sorted(names))
    kwargs = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required field cannot happen (all have defaults); keep the message clear
        raise fail(f"config section {prefix!r}: {exc}", "check the keys against configs/fmnist-tiny.yaml") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise fail(f"{key}={value!r} is not one of {list(choices)}", f"set {key} to one of {list(choices)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: a list of one
        if not isinstance(value, (list, tuple)):
            raise fail(f"{key}={value!r} must be a list", f"write {key} as a YAML list, e.g. [1, 2]")
        item_type = get_args(hint)[0]
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise fail(f"{key}={value!r} has type {type(value).__name__}, expected {getattr(hint, '__name__', hint)}",
               f"give {key} a {getattr(hint, '__name__', hint)} value")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML (or JSON) config file and apply `--set` overrides."""
    path = Path(path)
    if not path.is_file():
        raise fail(f"config file {path} does not exist", "pass a YAML file such as configs/fmnist-tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise fail(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise fail(f"config file {path} is a YAML {type(data).__name__}, not a mapping of sections (model:, gates:, ...)",
                   "write it like configs/fmnist-tiny.yaml")
    cfg = config_from_dict(data)
    return cfg.with_overrides(overrides) if overrides else cfg


def load_run_config(run_dir: str | Path) -> Config:
    """Read the config.json a run directory records."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise fail(f"{run_dir} has no config.json", "pass a run directory written by `tokengate train`")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise fail(f"{path} is not valid JSON", "re-run `tokengate train` into a fresh --out directory") from None


__all__ = [
    "BudgetConfig", "Config", "DataConfig", "ExportConfig", "GatesConfig", "MAX_THRESHOLD", "ModelConfig",
    "PhaseConfig", "TrainConfig", "ValidateConfig", "config_from_dict", "load_config", "load_run_config", "replace",
]

"""How far an INT8 Q/DQ model strays from its fp32 source in ONNX Runtime: top-1, kept tokens, batch invariance.

Kept *counts* come from the models' `kept_tokens` output. Kept *sets* are read from inside the graphs: each stage's
compaction TopK lists the kept patch indices first, and the quantizer keeps node names, so the same tensor exists in
both files (plugin flavor: TokenSelect hides them, so only counts are compared).
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx

from calib.quantize import cpu_session
from calib.selection_path import selection_nodes


@dataclass(frozen=True)
class Agreement:
    images: int
    top1_fp32: Optional[float]  # percent, None without labels
    top1_int8: Optional[float]
    prediction_agreement: float  # share of images with the same top-1
    kept_count_agreement: Optional[float]  # share of (image, stage) pairs with the same kept count
    kept_count_agreement_per_stage: Optional[tuple[float, ...]]
    kept_set_agreement: Optional[float]  # share of (image, stage) pairs with the same kept patch set
    batch_sizes: tuple[int, ...]
    max_abs_vs_batch1: float  # int8 model: max |logit - logit at batch 1| over every batch size
    flips_vs_batch1: int

    def to_dict(self) -> dict:
        return asdict(self)


def _with_topk_outputs(path: Path, folder: Path) -> tuple[Path, list[str]]:
    """A copy of the model that also outputs each stage's compaction TopK indices (one TopK per stage in the
    native and capped flavors: ranking itself is done by pairwise comparisons)."""
    model = onnx.load(str(path))
    chosen = set(selection_nodes(model))
    names = [n.output[1] for n in model.graph.node if n.op_type == "TopK" and n.name in chosen]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    out = folder / path.name
    onnx.save_model(model, str(out))
    return out, names


def _run(session, images: np.ndarray, batch_size: int, extra: Sequence[str]) -> tuple[np.ndarray, Optional[np.ndarray],
                                                                                        list[list[np.ndarray]]]:
    outputs = [o.name for o in session.get_outputs()]
    base = [o for o in outputs if o not in extra]
    logits, kept, sets = [], [], [[] for _ in extra]
    name = session.get_inputs()[0].name
    for start in range(0, len(images), batch_size):
        names = base + list(extra)
        values = dict(zip(names, session.run(names, {name: images[start:start + batch_size]})))
        logits.append(values[base[0]])
        if len(base) > 1:
            kept.append(values[base[1]])
        for s, key in enumerate(extra):
            sets[s] += list(values[key])
    return np.concatenate(logits), (np.concatenate(kept) if kept else None), sets


def compare(fp32: str | Path, int8: str | Path, images: np.ndarray, labels: Optional[np.ndarray] = None,
            num_prefix: int = 1, stages: int = 0, batch_sizes: Sequence[int] = (1, 7, 64),
            batch_size: int = 64) -> Agreement:
    """Run both models on `images` (float32 model inputs) and measure agreement; invariance on the int8 model.
    `stages`: the number of pruning stages (kept sets are compared when each has its TopK)."""
    with tempfile.TemporaryDirectory(prefix="tokengate-qcheck-") as tmp:
        paths = []
        for sub, path in (("fp32", Path(fp32)), ("int8", Path(int8))):
            (Path(tmp) / sub).mkdir()
            paths.append(_with_topk_outputs(path, Path(tmp) / sub))
        (p32, names32), (p8, names8) = paths
        extra = names32 if names32 == names8 and len(names32) == stages else []
        s32, s8 = cpu_session(p32), cpu_session(p8)
        l32, k32, sets32 = _run(s32, images, batch_size, extra)
        l8, k8, sets8 = _run(s8, images, batch_size, extra)
        invariance = [_run(s8, images, b, [])[0] for b in sorted(set(batch_sizes)) if b != 1]
        reference = _run(s8, images, 1, [])[0]
    pred32, pred8 = l32.argmax(-1), l8.argmax(-1)
    count_agree = None if k32 is None else float((k32 == k8).mean())
    per_stage = None if k32 is None else tuple(float(v) for v in (k32 == k8).mean(0))
    set_agree = None
    if extra and k32 is not None:
        same = [[_kept(sets32[s][i], k32[i, s] - num_prefix) == _kept(sets8[s][i], k8[i, s] - num_prefix)
                 for s in range(len(extra))] for i in range(len(images))]
        set_agree = float(np.mean(same))
    diffs = [float(np.abs(l - reference).max()) for l in invariance] or [0.0]
    flips = sum(int((l.argmax(-1) != reference.argmax(-1)).sum()) for l in invariance)
    top = (lambda p: float((p == labels).mean() * 100)) if labels is not None else (lambda p: None)
    return Agreement(images=len(images), top1_fp32=top(pred32), top1_int8=top(pred8),
                     prediction_agreement=float((pred32 == pred8).mean()), kept_count_agreement=count_agree,
                     kept_count_agreement_per_stage=per_stage,
                     kept_set_agreement=set_agree, batch_sizes=tuple(sorted(set(batch_sizes))),
                     max_abs_vs_batch1=max(diffs), flips_vs_batch1=flips)


def _kept(order: np.ndarray, patches: int) -> frozenset:
    """The kept patch indices of one image at one stage: the first `patches` entries of its compaction order."""
    return frozenset(int(i) for i in order[: int(patches)])

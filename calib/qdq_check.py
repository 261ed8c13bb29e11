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
from calib.qdq_graph import recorded_selection
from pipeline.contract import DOMAIN
from pipeline.export.metadata import read_info


@dataclass(frozen=True)
class Agreement:
    images: int
    top1_fp32: Optional[float]  # percent, None without labels
    top1_int8: Optional[float]
    prediction_agreement: float  # share of images with the same top-1
    kept_count_agreement: Optional[float]  # share of (image, stage) pairs with the same kept count
    kept_count_agreement_per_stage: Optional[tuple[float, ...]]
    kept_set_agreement: Optional[float]  # share of (image, stage) pairs with exactly the same kept patch set
    # Share of per-patch keep/drop decisions, over every (image, stage, patch), that agree: the patches either model
    # keeps are traced back to their original grid position through the earlier stages' compactions.
    token_agreement: Optional[float]
    batch_sizes: tuple[int, ...]
    max_abs_vs_batch1: float  # int8 model: max |logit - logit at batch 1| over every batch size
    flips_vs_batch1: int

    def to_dict(self) -> dict:
        return asdict(self)


def _with_topk_outputs(path: Path, folder: Path) -> tuple[Path, list[str]]:
    """A copy of the model that also outputs each stage's compaction TopK indices (one TopK per stage in the
    native and capped flavors: ranking itself is done by pairwise comparisons). None from a graph with TokenSelect
    nodes: they hide the kept compaction, and a TopK beside them compacts the context."""
    model = onnx.load(str(path))
    chosen = set(recorded_selection(read_info(path, model), path)[0])
    fused = any(n.domain == DOMAIN for n in model.graph.node)
    names = [] if fused else [n.output[1] for n in model.graph.node if n.op_type == "TopK" and n.name in chosen]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None))
    out = folder / path.name
    onnx.save_model(model, str(out))
    return out, names


def stage_topks(names: Sequence[str], compactions: Sequence[int]) -> list[str]:
    """The kept-token compaction TopK of each stage, from the TopKs of an export in its node order (the exporter's is
    program order). `compactions` (`stage_compactions`): each stage's TopKs, one, or two where a pruning stage's
    dropped tokens become context (its kept compaction comes first, as in `GatedViT.select_stage`, then the
    context's). Any other count: [] (kept sets are then not compared)."""
    if not compactions or len(names) != sum(compactions):
        return []
    firsts = [sum(compactions[:s]) for s in range(len(compactions))]
    return [names[i] for i in firsts]


def stage_compactions(info) -> list[int]:
    """Compaction TopKs per stage of an exported model (its ExportInfo): two at a pruning stage in context mode,
    else one (the merge stage keeps no context)."""
    gates = info.run_config().gates
    merge = gates.merge_block is not None
    return [1 if (merge and s == 0) or gates.dropped_tokens != "context" else 2 for s in range(len(info.stages))]


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
            num_prefix: int = 1, compactions: Sequence[int] = (), num_patches: int = 0,
            batch_sizes: Sequence[int] = (1, 7, 64), batch_size: int = 64) -> Agreement:
    """Run both models on `images` (float32 model inputs) and measure agreement; invariance on the int8 model.
    `compactions`: each stage's compaction TopKs (`stage_compactions`; kept sets are compared when every stage has
    them); `num_patches`: the patch grid's size, which per-token agreement is a share of (see `patch_count`)."""
    with tempfile.TemporaryDirectory(prefix="tokengate-qcheck-") as tmp:
        paths = []
        for sub, path in (("fp32", Path(fp32)), ("int8", Path(int8))):
            (Path(tmp) / sub).mkdir()
            paths.append(_with_topk_outputs(path, Path(tmp) / sub))
        (p32, names32), (p8, names8) = paths
        # Chosen by their order in the fp32 export (program order); the quantizer keeps names, not node order.
        extra = stage_topks(names32, compactions) if set(names32) == set(names8) else []
        s32, s8 = cpu_session(p32), cpu_session(p8)
        l32, k32, sets32 = _run(s32, images, batch_size, extra)
        l8, k8, sets8 = _run(s8, images, batch_size, extra)
        invariance = [_run(s8, images, b, [])[0] for b in sorted(set(batch_sizes)) if b != 1]
        reference = _run(s8, images, 1, [])[0]
    pred32, pred8 = l32.argmax(-1), l8.argmax(-1)
    count_agree = None if k32 is None else float((k32 == k8).mean())
    per_stage = None if k32 is None else tuple(float(v) for v in (k32 == k8).mean(0))
    set_agree = token_agree = None
    if extra and k32 is not None and num_patches:
        kept32 = [_original_ids([sets32[s][i] for s in range(len(extra))], k32[i] - num_prefix, num_patches)
                  for i in range(len(images))]
        kept8 = [_original_ids([sets8[s][i] for s in range(len(extra))], k8[i] - num_prefix, num_patches)
                 for i in range(len(images))]
        set_agree = float(np.mean([[a == b for a, b in zip(x, y)] for x, y in zip(kept32, kept8)]))
        token_agree = 1.0 - float(np.mean([[len(a ^ b) / num_patches for a, b in zip(x, y)]
                                           for x, y in zip(kept32, kept8)]))
    diffs = [float(np.abs(l - reference).max()) for l in invariance] or [0.0]
    flips = sum(int((l.argmax(-1) != reference.argmax(-1)).sum()) for l in invariance)
    top = (lambda p: float((p == labels).mean() * 100)) if labels is not None else (lambda p: None)
    return Agreement(images=len(images), top1_fp32=top(pred32), top1_int8=top(pred8),
                     prediction_agreement=float((pred32 == pred8).mean()), kept_count_agreement=count_agree,
                     kept_count_agreement_per_stage=per_stage,
                     kept_set_agreement=set_agree, token_agreement=token_agree, batch_sizes=tuple(sorted(set(batch_sizes))),
                     max_abs_vs_batch1=max(diffs), flips_vs_batch1=flips)


def patch_count(info) -> int:
    """Patches in the grid of an exported model (its ExportInfo), from the architecture it records."""
    from dataclasses import replace

    from pipeline.models import build_teacher

    cfg = info.run_config()
    return build_teacher(replace(cfg, model=replace(cfg.model, checkpoint=None, pretrained=False))).geometry().num_patches


def _original_ids(orders: Sequence[np.ndarray], kept: Sequence[int], num_patches: int) -> list[frozenset]:
    """Per stage, the original grid positions of one image's kept patches.

    Stage s's compaction order indexes the patches that entered it (stage s-1's kept ones, in their kept order;
    the order is as long as the batch's padded width, not the image's count), and its first `kept[s]` entries are
    the kept patches."""
    ids = np.arange(num_patches)
    out = []
    for order, count in zip(orders, kept):
        local = np.asarray(order[: int(count)], dtype=np.int64)
        if local.size and local.max() >= len(ids):
            raise ValueError(f"compaction index {int(local.max())} beyond the {len(ids)} patches entering the stage")
        ids = ids[local]
        out.append(frozenset(int(i) for i in ids))
    return out

"""GFLOPs (MAC convention) as a fraction of the dense teacher, and the budgets that cannot be met."""
from __future__ import annotations

import torch

from pipeline.errors import fail
from pipeline.flops import dense_macs
from pipeline.models import GatedViT


def reference_macs(teacher: GatedViT) -> float:
    """The dense teacher's MACs per image: what every ratio is a fraction of (as in summary.json)."""
    return float(dense_macs(teacher.geometry()))


def cost_ratios(model: GatedViT, lengths: torch.Tensor, reference: float) -> torch.Tensor:
    """MACs of each row of kept tokens [N, S] (prefix included), over the reference: [N] float64."""
    return model.macs(lengths.double()).double() / reference


def cost_ratio(model: GatedViT, lengths: torch.Tensor, reference: float) -> float:
    """Mean MACs per image from kept tokens [N, S], over the reference."""
    return float(cost_ratios(model, lengths, reference).mean())


def floor_ratio(model: GatedViT, reference: float) -> float:
    """The least any thresholds can cost: patch embedding, head and the blocks before the first stage at every token,
    then the fewest tokens each stage can leave (`GatedViT.fewest_tokens`)."""
    return float(model.macs(model.fewest_tokens())[0]) / reference


def check_budget(budget: float) -> None:
    if not 0.0 < budget <= 1.0:
        raise fail(f"budget {budget} is outside (0, 1]",
                   "give the target GFLOPs as a fraction of dense, e.g. --budget 0.6")


def check_reachable(budget: float, floor: float, model: GatedViT) -> None:
    """Refuse a budget at or below what pruning can never remove, naming what that cost is made of."""
    if budget <= floor:
        first = model.stages[0]
        parts = ["patch embedding", "head"] + ([f"blocks 0-{first - 1} at every token"] if first > 0 else [])
        if model.merge_block is not None:
            parts.append("the merge stage merging at most half the patches")
        if model.token_stages:
            parts.append(f"{model.num_prefix} prefix + {model.min_keep} min_keep tokens per pruning stage")
        fix = (f"use a budget above {floor:.3f}, or drop --merge-only (the pruning stages reach lower)"
               if not model.token_stages else f"use a budget above {floor:.3f}, or prune earlier (gates.token_stages)")
        if model.token_stages and model.dropped_tokens == "context":
            fix += "; dropped tokens kept as context still cost their keys and values (--dropped-tokens discard " \
                   "costs less)"
        raise fail(f"budget {budget:g} is below {floor:.3f}, the cost that no threshold removes "
                   f"({', '.join(parts)})", fix)

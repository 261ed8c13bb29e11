"""Accuracy and cost of a model in hard-drop inference mode, the numbers summary.json reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from pipeline.progress import progress

from pipeline.data import Dataset, Split
from pipeline.flops import gmacs
from pipeline.models import GatedViT


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    gflops: float  # mean per image, MAC convention
    params: int
    mean_kept: list[float]  # tokens (prefix included) after each stage, averaged over images
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: GatedViT) -> int:
    """Parameters of the deployed network (the ViT; thresholds are a handful of scalars and counted too)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("static_gates.",)))


@torch.no_grad()
def evaluate(model: GatedViT, dataset: Dataset, split: Split, batch_size: int = 256, device: str | torch.device = "cpu",
             show_progress: bool = True, desc: str = "eval") -> EvalResult:
    """Top-1 and mean GFLOPs with tokens physically dropped, over a whole split."""
    model = model.eval().to(device)
    correct, total, macs_sum = 0, 0, 0.0
    kept_sum = torch.zeros(len(model.stages), dtype=torch.float64)
    batches = dataset.batches(split, batch_size)
    steps = -(-len(split) // batch_size)
    for images, labels in progress(batches, total=steps, desc=desc, disable=not show_progress, leave=False):
        gates: list = []
        logits, lengths = model.forward_dropped(images.to(device), record_gates=gates)
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += len(labels)
        lengths = lengths.cpu().double()
        kept_sum += lengths.sum(0)
        gated = model.group_gates is not None or model.static_gates is not None  # the structure in use differs
        macs_sum += float(model.macs(lengths, [_cpu(g) for g in gates] if gated else None).sum())
    return EvalResult(top1=100.0 * correct / max(total, 1), gflops=gmacs(macs_sum / max(total, 1)),
                      params=count_params(model), mean_kept=(kept_sum / max(total, 1)).tolist(), images=total)


def _cpu(gates):
    return type(gates)(*(None if g is None else g.detach().cpu().double() for g in gates))

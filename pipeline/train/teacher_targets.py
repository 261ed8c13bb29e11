"""The dense teacher's logits that the student is distilled towards, looked up by image index or run per batch.

A training batch is a pure function of its images' indices (`Dataset.batch`: no random augmentation) and the
teacher is frozen in eval mode, so each image's teacher logits are the same in every step of every student epoch:
one inference pass over the training split gives them all. Where that table would not fit in memory the teacher
runs on each batch instead, with the same result.
"""
from __future__ import annotations

from typing import Optional

import torch

from pipeline.data import Dataset, Split
from pipeline.models import GatedViT
from pipeline.progress import progress
from pipeline.train.distributed import Runtime, gather_interleaved

CACHE_LIMIT_BYTES = 256 << 20  # float32 logits of every training image; ImageNet-1k (1.28M x 1000) runs per batch


class TeacherTargets:
    """The teacher's logits for a batch: from the table when there is one, else from a forward pass."""

    def __init__(self, teacher: GatedViT, table: Optional[torch.Tensor] = None):
        self.teacher = teacher
        self.table = table

    def __call__(self, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[index.to(self.table.device)]
        with torch.no_grad():
            return self.teacher.forward_dropped(images)[0]


def teacher_targets(teacher: GatedViT, dataset: Dataset, batch_size: int, runtime: Runtime) -> TeacherTargets:
    """A table of the teacher's logits over the training split where it fits in CACHE_LIMIT_BYTES."""
    split = dataset.train
    if len(split) * dataset.num_classes * 4 > CACHE_LIMIT_BYTES:
        return TeacherTargets(teacher)
    return TeacherTargets(teacher, logits_table(teacher, dataset, split, batch_size, runtime))


@torch.inference_mode()
def logits_table(teacher: GatedViT, dataset: Dataset, split: Split, batch_size: int, runtime: Runtime) -> torch.Tensor:
    """[N, classes] logits of the split's images in index order; each DDP rank runs its interleaved share."""
    teacher.eval()
    index = torch.arange(runtime.rank, len(split), runtime.world)
    chunks = index.split(batch_size)
    rows = [teacher.forward_dropped(dataset.batch(split, chunk)[0].to(runtime.device))[0]
            for chunk in progress(chunks, desc="teacher logits", disable=not runtime.is_main, leave=False)]
    rows = torch.cat(rows) if rows else torch.empty(0, dataset.num_classes, device=runtime.device)
    return gather_interleaved(rows, len(split), runtime.rank, runtime.world)

"""A GatedViT's hard-drop forward, run one pruning stage at a time over a whole calibration set.

Calibration (calib/) and the bench's keep-ratio fitting need what `GatedViT.forward_dropped` cannot give: each
stage's token scores for *all* images before that stage's threshold is chosen (a threshold is a quantile of the
pooled scores). So this runs the model's own pieces (`embed`, `block_gates`, `forward_gated`, `select_tokens`,
`head`) in the same order, stage-major instead of batch-major, and caches everything before the first stage, which
no threshold changes. Each stage is the model's own `select_stage`, so dropped tokens become context exactly as
deployed. Its parity with `forward_dropped` is tested."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from pipeline.errors import fail
from pipeline.models import GatedViT
from pipeline.models.layers import Context
from pipeline.models.token_ops import key_valid_from_lengths

# (stage index, pooled finite scores of every valid patch token at that stage) -> the stage's threshold
ThresholdRule = Callable[[int, torch.Tensor], float]


@dataclass
class _Chunk:
    x: torch.Tensor
    valid: Optional[torch.Tensor]
    scores: Optional[torch.Tensor]
    context: Optional[Context] = None
    sizes: Optional[torch.Tensor] = None  # after a merge stage
    partner: Optional[torch.Tensor] = None  # before the merge stage: each A token's partner


@dataclass(frozen=True)
class StagedOutput:
    logits: torch.Tensor  # [N, classes]
    lengths: torch.Tensor  # [N, S] int32, tokens (prefix included) after each stage
    thresholds: tuple[float, ...]


class StagedForward:
    """Re-runs a model from its first pruning stage under different per-stage threshold rules."""

    def __init__(self, model: GatedViT, images: torch.Tensor, batch_size: int = 256):
        if model.group_gates is not None or model.static_gates is not None:
            raise fail("calibration works on a plain token-gated model (no static or group gates)",
                       "calibrate a dense teacher, or a sliced student from a run with gates.dynamic=none")
        if not model.stages:
            raise fail("the model has no token-pruning stages, so there are no thresholds to calibrate",
                       "set gates.token_stages (or leave it null for the default stages)")
        self.model = model.eval()
        with torch.no_grad():
            self._prefix = [self._merge_scores(self._blocks(_Chunk(model.embed(chunk), None, None), 0, model.stages[0]))
                            for chunk in images.split(batch_size)]

    @torch.no_grad()
    def run(self, rule: ThresholdRule, view: Optional[GatedViT] = None) -> StagedOutput:
        """Choose each stage's threshold from the pooled scores, drop tokens, and go on to the next stage.

        `view`: the model under another selection (`GatedViT.with_inference`, the same parameters), e.g. the
        fixed-count baseline; the cached blocks before the first stage are the same for every selection."""
        model = self.model if view is None else view
        stages = model.stages
        chunks, thresholds, lengths = self._prefix, [], []
        for s, start in enumerate(stages):
            pooled = torch.cat([c.scores[torch.isfinite(c.scores)] for c in chunks])
            threshold = float(rule(s, pooled))
            thresholds.append(threshold)
            end = stages[s + 1] if s + 1 < len(stages) else len(model.vit.blocks)
            theta = torch.tensor(threshold, dtype=torch.float32)
            next_chunks, stage_lengths = [], []
            for c in chunks:
                out = model.select_stage(s, c.x, c.valid, c.scores, c.context, theta, c.sizes, c.partner)
                valid = key_valid_from_lengths(out.lengths, out.x.shape[1])
                next_chunks.append(self._blocks(_Chunk(out.x, valid, None, out.context, out.sizes), start, end, model))
                stage_lengths.append(out.lengths)
            chunks = next_chunks
            lengths.append(torch.cat(stage_lengths))
        logits = torch.cat([model.head(c.x) for c in chunks])
        return StagedOutput(logits, torch.stack(lengths, dim=1), tuple(thresholds))

    def _blocks(self, chunk: _Chunk, start: int, end: int, model: Optional[GatedViT] = None) -> _Chunk:
        """Blocks [start, end) exactly as forward_dropped runs them; keeps the scores the next stage needs."""
        model, x, scores = model or self.model, chunk.x, chunk.scores
        for i in range(start, end):
            gates = model.block_gates(i, x[:, 0], None)
            x, scores = model.vit.blocks[i].forward_gated(x, chunk.valid, None, gates, model.num_prefix,
                                                          i in model.score_layers, chunk.context,
                                                          shared_scores=model.inference.shared_scores,
                                                          sizes=chunk.sizes)
        return _Chunk(x, chunk.valid, scores, chunk.context, chunk.sizes)

    def _merge_scores(self, chunk: _Chunk) -> _Chunk:
        """Before a first stage that merges: its scores and partners, which no threshold changes."""
        if not self.model.is_merge_stage(0):
            return chunk
        scores, partner = self.model.stage_inputs(0, chunk.x, chunk.scores)
        return _Chunk(chunk.x, chunk.valid, scores, chunk.context, chunk.sizes, partner)


MIN_GAP = 1e-6  # a threshold sits between pooled scores at least this far apart (float32 rounding: ~1e-7)


def quantile_threshold(pooled: torch.Tensor, keep: float) -> float:
    """The threshold that keeps about the `keep` share of the pooled scores: midway between the last kept and the
    first dropped. keep >= 1 gives a threshold below every score (1.0 below the lowest; 0.0 with no scores).

    The cut moves to the nearest place where consecutive scores differ by at least MIN_GAP (keeping more on a tie):
    a threshold between two equal or nearly equal scores would let float rounding decide those tokens, differently
    in PyTorch and in each runtime. Scores that tie exactly are common after a merge stage (identical background
    patches have a cosine similarity of exactly 1 in float32)."""
    n = pooled.numel()
    if n == 0:
        return 0.0
    ordered = pooled.sort(descending=True).values
    count = int(round(keep * n))
    if count >= n:
        return float(ordered[-1]) - 1.0
    if count <= 0:
        return float(ordered[0]) + 1.0
    cuts = ((ordered[:-1] - ordered[1:]) >= MIN_GAP).nonzero().flatten() + 1  # cut c keeps ordered[:c]
    if cuts.numel() == 0:
        return float(ordered[-1]) - 1.0 if keep >= 0.5 else float(ordered[0]) + 1.0
    distance = (cuts - count).abs()
    cut = int(cuts[(distance == distance.min()).nonzero().flatten()[-1]])  # the nearer cut; on a tie the larger
    return float((ordered[cut - 1] + ordered[cut]) / 2)

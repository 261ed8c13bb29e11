"""The token-gated, structurally gated ViT: a thin wrapper that runs a timm VisionTransformer's own parts.

Two forward paths share every layer:
- `forward_masked` (training): all tokens stay; dropped ones are masked out of attention by a hard mask whose
  gradient comes from the soft mask (straight-through), and gates multiply their branches.
- `forward_dropped` (inference): tokens are physically removed through TokenSelect, padded keys are masked, so
  every sample's logits are independent of its batch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from pipeline.errors import fail
from pipeline.flops import Geometry, embed_and_head_macs, layer_macs, merge_macs, tokens_per_layer
from pipeline.models import token_ops
from pipeline.models.gates import GroupGates, StaticGates, combine
from pipeline.models.layers import BlockGates, Context, remove_attention, remove_mlp, slice_channels, slice_heads
from pipeline.models.select_op import SELECT_IMPLS, context_size, kept_mask, select_tokens

DROPPED_TOKENS = ("discard", "context")
MERGE_INIT = -1.0  # a merge stage's initial threshold: only identical tokens merge


def default_stages(depth: int) -> tuple[int, ...]:
    """Prune before blocks depth/4, depth/2, 3*depth/4 (0-based): 3, 6, 9 for a 12-block model."""
    stages = sorted({int(depth * k / 4 + 0.5) for k in (1, 2, 3)})
    return tuple(s for s in stages if 1 <= s < depth)


@dataclass(frozen=True)
class Structure:
    """Per-layer attention head counts and MLP widths; 0 means the sub-block is removed."""

    heads: tuple[int, ...]
    mlp_hidden: tuple[int, ...]

    @staticmethod
    def of(vit: VisionTransformer) -> "Structure":
        return Structure(
            heads=tuple(0 if b.attn is None else b.attn.num_heads for b in vit.blocks),
            mlp_hidden=tuple(0 if b.mlp is None else b.mlp.fc1.out_features for b in vit.blocks),
        )

    def apply(self, vit: VisionTransformer) -> None:
        """Shrink a freshly built model to this structure (weights are loaded afterwards)."""
        if len(self.heads) != len(vit.blocks) or len(self.mlp_hidden) != len(vit.blocks):
            raise fail(f"the checkpoint's structure has {len(self.heads)} layers but the model has {len(vit.blocks)}",
                       "load the checkpoint with the config it was trained with (its run's config.json)")
        for block, heads, hidden in zip(vit.blocks, self.heads, self.mlp_hidden):
            if block.attn is not None and heads > block.attn.num_heads or block.mlp is not None and hidden > block.mlp.fc1.out_features:
                raise fail("the checkpoint's structure is wider than the model",
                           "load the checkpoint with the config it was trained with (its run's config.json)")
            if heads == 0:
                remove_attention(block)
            elif block.attn is not None and heads < block.attn.num_heads:
                slice_heads(block.attn, torch.arange(heads))
            if hidden == 0:
                remove_mlp(block)
            elif block.mlp is not None and hidden < block.mlp.fc1.out_features:
                slice_channels(block.mlp, torch.arange(hidden))

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "mlp_hidden": list(self.mlp_hidden)}

    @staticmethod
    def from_dict(data: dict) -> "Structure":
        return Structure(tuple(int(h) for h in data["heads"]), tuple(int(m) for m in data["mlp_hidden"]))


@dataclass(frozen=True)
class Inference:
    """How `forward_dropped` drops tokens: one frozen value per graph, never state that a previous call left behind.

    select: the custom op, standard ops, standard ops with a static K (`caps`: patch tokens kept at most per stage),
        or the fixed-count baseline (`caps`: patch tokens kept per stage); see select_op.SELECT_IMPLS.
    shared_scores: scoring layers read the class row off their own attention (one pass, the fewest nodes: what ONNX
        Runtime wants), or run a separate class-token pass, which leaves each attention a plain
        MatMul-Softmax-MatMul with one consumer: the pattern TensorRT fuses into a single attention kernel. Same
        values either way (to float rounding); the MACs model counts the shared form.
    """

    select: str = "op"
    caps: Optional[tuple[int, ...]] = None
    shared_scores: bool = True

    def check(self, stages: Sequence[int]) -> "Inference":
        if self.select not in SELECT_IMPLS:
            raise fail(f"unknown selection {self.select!r}", f"use one of {list(SELECT_IMPLS)}")
        caps = self.caps
        if self.select in ("capped", "fixed") and (caps is None or len(caps) != len(stages)):
            raise fail(f"the {self.select} selection needs one patch count per stage", "pass caps=[K1, K2, ...]")
        if self.select == "fixed" and any(later > earlier for earlier, later in zip(caps, caps[1:])):
            raise fail(f"fixed counts {list(caps)} grow from one stage to the next, but a stage can only keep tokens "
                       "the one before it kept", "pass non-increasing counts, e.g. [30, 15, 8]")
        return self


class MaskedStats(NamedTuple):
    """What the budget loss needs from a training forward."""

    tokens: torch.Tensor  # [B, S] straight-through token counts (prefix included) after each stage
    gates: list[BlockGates]  # per layer, straight-through values


class GatedViT(nn.Module):
    """A timm VisionTransformer plus learnable token thresholds and optional structural gates."""

    def __init__(
        self,
        vit: VisionTransformer,
        stages: Sequence[int] = (),
        min_keep: int = 1,
        tau: float = 0.1,
        init_threshold: float = 0.5,
        static_gates: bool = False,
        static_init: float = 2.0,
        dynamic: str = "none",
        dropped_tokens: str = "discard",
        merge_block: Optional[int] = None,
    ):
        super().__init__()
        depth = len(vit.blocks)
        stages = tuple(int(s) for s in stages)
        if any(not 1 <= s < depth for s in stages) or list(stages) != sorted(set(stages)):
            raise fail(f"token stages {list(stages)} must be increasing block indices in [1, {depth - 1}]",
                       f"set gates.token_stages, e.g. {list(default_stages(depth))}, or leave it null")
        if merge_block is not None and not 0 <= merge_block < (stages[0] if stages else depth):
            raise fail(f"gates.merge_block={merge_block} must be a block before the first token stage "
                       f"({stages[0] if stages else 'none'})", "use gates.merge_block=0 (merge before the first block)")
        num_patches = vit.patch_embed.num_patches
        if merge_block is not None and num_patches < 2:
            raise fail(f"a merge stage pairs patch tokens, and the model has {num_patches}",
                       "set gates.merge_block=null")
        if not 1 <= min_keep <= num_patches:
            raise fail(f"gates.min_keep={min_keep} is outside [1, {num_patches}] patch tokens", "use gates.min_keep=1")
        if dropped_tokens not in DROPPED_TOKENS:
            raise fail(f"gates.dropped_tokens={dropped_tokens!r} is not one of {list(DROPPED_TOKENS)}",
                       "use discard (pruned tokens leave) or context (they stay as frozen keys and values)")
        self.vit = vit
        self.merge_block = merge_block
        # Every stage, in block order: the merge stage first (if any), then the pruning stages. Each has a threshold,
        # a column of the kept-token counts and, in the capped flavor, a cap.
        self.stages = stages if merge_block is None else (int(merge_block), *stages)
        self.dropped_tokens = dropped_tokens
        self.min_keep = min_keep
        self.tau = tau
        # A merge stage's threshold is on minus the cosine similarity: -1.0 merges only identical tokens.
        self.thresholds = nn.Parameter(torch.tensor([MERGE_INIT if self.is_merge_stage(s) else float(init_threshold)
                                                     for s in range(len(self.stages))]))
        structure = Structure.of(vit)
        self.static_gates = (
            StaticGates(structure.heads, structure.mlp_hidden, self.score_layers, static_init) if static_gates else None
        )
        self.group_gates = GroupGates(vit.embed_dim, structure.heads, self.score_layers) if dynamic == "group" else None
        self.inference = Inference()  # how forward_dropped drops tokens; `with_inference` gives other views

    # ---- description ---------------------------------------------------------------------------------------
    @property
    def num_prefix(self) -> int:
        return self.vit.num_prefix_tokens

    @property
    def token_stages(self) -> tuple[int, ...]:
        """The pruning stages (blocks), without the merge stage."""
        return self.stages[1:] if self.merge_block is not None else self.stages

    @property
    def score_layers(self) -> tuple[int, ...]:
        """Blocks whose class attention scores the tokens of the following pruning stage."""
        return tuple(s - 1 for s in self.token_stages)

    def is_merge_stage(self, stage: int) -> bool:
        """Whether stage `stage` (an index into `stages`) merges similar tokens rather than pruning by attention."""
        return self.merge_block is not None and stage == 0

    def structure(self) -> Structure:
        return Structure.of(self.vit)

    def geometry(self) -> Geometry:
        vit, s = self.vit, self.structure()
        head_dim = next((b.attn.head_dim for b in vit.blocks if b.attn is not None), vit.embed_dim)
        return Geometry(
            embed_dim=vit.embed_dim, in_chans=vit.patch_embed.proj.in_channels,
            patch_area=vit.patch_embed.patch_size[0] * vit.patch_embed.patch_size[1],
            num_patches=vit.patch_embed.num_patches, num_prefix=self.num_prefix, num_classes=vit.num_classes,
            num_heads_out=2 if getattr(vit, "head_dist", None) is not None else 1, head_dim=head_dim,
            heads=s.heads, mlp_hidden=s.mlp_hidden,
        )

    def with_inference(self, select: str = "op", caps: Optional[Sequence[int]] = None,
                       shared_scores: bool = True) -> "GatedViT":
        """This model (the same parameters, not a copy of them) under another `Inference`; `self`'s own mode is
        unchanged, so what a graph computes never depends on what was exported or evaluated before. The view shares
        the submodules: train()/eval(), .to() or loading weights through it change the original's too."""
        view = copy.copy(self)
        view.inference = Inference(select, None if caps is None else tuple(int(c) for c in caps),
                                   shared_scores).check(self.stages)
        return view

    # ---- shared pieces -------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.norm(x))

    def block_gates(self, layer: int, cls_tokens: torch.Tensor, group_ids: Optional[torch.Tensor]) -> BlockGates:
        gates = BlockGates()
        if self.static_gates is not None:
            if self.training:
                gates = self.static_gates.layer(layer)
            else:
                heads, channels, attn, mlp = self.static_gates.hard(layer)
                gates = BlockGates(*(g.to(cls_tokens.dtype) for g in (heads, channels, attn, mlp)))
        if self.group_gates is not None:
            gates = combine(gates, self.group_gates.layer(layer, cls_tokens, group_ids if self.training else None))
        return gates

    # ---- forwards ------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_masked(images)[0] if self.training else self.forward_dropped(images)[0]

    def forward_masked(self, images: torch.Tensor, group_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, MaskedStats]:
        """All tokens stay in the tensors; dropped ones are masked. Gradients reach thresholds and gates."""
        if self.merge_block is not None:
            raise fail("a merge stage is training-free: it has no masked (training) forward",
                       "train with gates.merge_block=null; tokengate calibrate adds the merge stage to a trained run")
        x = self.embed(images)
        batch, num_tokens, _ = x.shape
        prefix = x.new_ones(batch, self.num_prefix)
        valid: Optional[torch.Tensor] = None
        value_gate: Optional[torch.Tensor] = None
        scores: Optional[torch.Tensor] = None
        counts, layer_gates = [], []
        for i, block in enumerate(self.vit.blocks):
            if i in self.stages:
                s = self.stages.index(i)
                hard = token_ops.keep_mask(scores, self.thresholds[s], self.min_keep)
                soft = token_ops.soft_keep(scores, self.thresholds[s], self.tau)
                patch_gate = token_ops.straight_through(hard, soft)
                if value_gate is not None:
                    patch_gate = patch_gate * value_gate[:, self.num_prefix:]
                value_gate = torch.cat([prefix, patch_gate], dim=1)
                valid = torch.cat([prefix.bool(), hard], dim=1)
                counts.append(value_gate.sum(dim=1))
            gates = self.block_gates(i, x[:, 0], group_ids)
            layer_gates.append(gates)
            if self.dropped_tokens == "context":  # every token stays a key; dropped ones stop taking updates
                x, scores = block.forward_gated(x, None, None, gates, self.num_prefix, i in self.score_layers,
                                                update_gate=value_gate, score_valid=valid)
            else:
                x, scores = block.forward_gated(x, valid, value_gate if self.training else None, gates,
                                                self.num_prefix, want_scores=i in self.score_layers)
        tokens = torch.stack(counts, dim=1) if counts else x.new_zeros(batch, 0)
        return self.head(x), MaskedStats(tokens=tokens, gates=layer_gates)

    def forward_dropped(self, images: torch.Tensor, record_gates: Optional[list] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens are physically dropped. Returns logits and lengths [B, S] (int32: tokens kept after each stage).

        `record_gates`, if given, receives each layer's gate values (for the cost of dynamic gates).
        """
        x = self.embed(images)
        valid: Optional[torch.Tensor] = None
        scores: Optional[torch.Tensor] = None
        context: Optional[Context] = None
        sizes: Optional[torch.Tensor] = None
        kept = []
        for i, block in enumerate(self.vit.blocks):
            if i in self.stages:
                s = self.stages.index(i)
                scores, partner = self.stage_inputs(s, x, scores)
                x, lengths, context, sizes = self.select_stage(s, x, valid, scores, context, self.thresholds[s], sizes,
                                                               partner)
                valid = token_ops.key_valid_from_lengths(lengths, x.shape[1])
                kept.append(lengths)
            gates = self.block_gates(i, x[:, 0], None)
            if record_gates is not None:
                record_gates.append(gates)
            x, scores = block.forward_gated(x, valid, None, gates, self.num_prefix, i in self.score_layers, context,
                                            shared_scores=self.inference.shared_scores, sizes=sizes)
        lengths = torch.stack(kept, dim=1) if kept else torch.zeros(x.shape[0], 0, dtype=torch.int32, device=x.device)
        return self.head(x), lengths

    def stage_inputs(self, stage: int, x: torch.Tensor, class_scores: Optional[torch.Tensor]
                     ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What stage `stage` selects by, for `select_stage`: (scores, partner). The merge stage's come from the
        tokens it sees (`bipartite_keep_scores`: minus each A token's best similarity, and that B partner); a
        pruning stage's scores are the class attention of the block before it (`class_scores`), with no partner."""
        if self.is_merge_stage(stage):
            return token_ops.bipartite_keep_scores(x, self.num_prefix)
        return class_scores, None

    def select_stage(self, stage: int, x: torch.Tensor, valid: Optional[torch.Tensor], scores: torch.Tensor,
                     context: Optional[Context], threshold: torch.Tensor, sizes: Optional[torch.Tensor] = None,
                     partner: Optional[torch.Tensor] = None) -> StageOutput:
        """One stage of `forward_dropped`: the kept tokens [B, K, C] and their lengths [B] (prefix included), with
        `dropped_tokens == "context"` the context grown by the valid tokens a pruning stage dropped, and after a
        merge stage the sizes [B, K] of the kept rows (`sizes` are those of x's rows, None before any merge).

        A merge stage first averages each merged token into its partner, then drops it like a pruned token; its
        `scores` and `partner` are `stage_inputs`'."""
        if self.is_merge_stage(stage):
            if partner is None:
                raise ValueError("the merge stage needs the partners that stage_inputs returns with its scores")
            merged = self.stage_keep_mask(stage, scores, threshold)[:, 0::2].logical_not()
            base = x.new_ones(x.shape[:2]) if sizes is None else sizes
            x, sizes = token_ops.merge_into_partners(x, base, merged, partner, self.num_prefix)
        both = x if sizes is None else torch.cat([x, sizes[..., None]], dim=-1)  # sizes travel as a last channel
        kept, lengths = select_tokens(both, scores, threshold, self.num_prefix, self.min_keep, self.inference.select,
                                      self._stage_cap(stage))
        kept, kept_sizes = _split_sizes(kept, sizes is not None, lengths)
        if self.dropped_tokens != "context" or self.is_merge_stage(stage):
            return StageOutput(kept, lengths, context, kept_sizes)
        dropped = self.stage_keep_mask(stage, scores, threshold).logical_not()
        if valid is not None:
            dropped = dropped & valid[:, self.num_prefix:]
        caps = None if self.inference.caps is None else self.inference.caps[:stage + 1]
        size = context_size(self.inference.select, self.geometry().num_patches, self.min_keep, caps)
        if context is not None:
            before = context.tokens if context.sizes is None else torch.cat([context.tokens, context.sizes[..., None]], -1)
            before_valid = context.valid
        elif sizes is not None:  # after a merge stage a sample may have fewer than `size` patch rows: start from padding
            before = both.new_zeros(both.shape[0], size, both.shape[2])
            before_valid = torch.zeros(both.shape[0], size, dtype=torch.bool, device=both.device)
        else:
            before = before_valid = None
        tokens, context_valid = token_ops.add_to_context(before, before_valid, both[:, self.num_prefix:], dropped, size)
        tokens, context_sizes = _split_sizes(tokens, sizes is not None, context_valid.sum(dim=1))
        return StageOutput(kept, lengths, Context(tokens, context_valid, context_sizes), kept_sizes)

    def stage_keep_mask(self, stage: int, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """[B, K] bool: the patch tokens `select_stage` keeps at `stage` (the selection's own rule and cap)."""
        return kept_mask(scores, threshold, self.min_keep, self.inference.select, self._stage_cap(stage))

    def _stage_cap(self, stage: int) -> Optional[int]:
        return None if self.inference.caps is None else self.inference.caps[stage]

    # ---- cost ----------------------------------------------------------------------------------------------
    def macs(self, tokens: torch.Tensor, gates: Optional[Sequence[BlockGates]] = None) -> torch.Tensor:
        """Per-sample MACs from token counts [B, S] and (optionally straight-through) gate values."""
        geom = self.geometry()
        per_layer = tokens_per_layer(geom.num_tokens, geom.depth, self.stages, tokens)
        total: torch.Tensor | int = embed_and_head_macs(geom)
        if self.merge_block is not None:
            total = total + merge_macs(geom.num_patches, geom.embed_dim)
        for i, n in enumerate(per_layer):
            g = gates[i] if gates is not None else BlockGates()
            heads = geom.heads[i] if g.heads is None else g.heads.sum(dim=-1)
            hidden = geom.mlp_hidden[i] if g.channels is None else g.channels.sum(dim=-1)
            attn_on = int(geom.heads[i] > 0) if g.attn is None else g.attn
            mlp_on = int(geom.mlp_hidden[i] > 0) if g.mlp is None else g.mlp
            total = total + layer_macs(n, geom.embed_dim, geom.head_dim, heads, hidden, attn_on, mlp_on,
                                       self._context_tokens(i, n, tokens, geom))
        return torch.as_tensor(total, dtype=torch.float32).expand(tokens.shape[0]) if not torch.is_tensor(total) else total

    def static_macs(self) -> torch.Tensor:
        """MACs of the structure the static gates keep, with every token kept (differentiable in the gates)."""
        full = torch.full((1, len(self.stages)), float(self.geometry().num_tokens))
        gates = [self.static_gates.layer(i) for i in range(len(self.vit.blocks))] if self.static_gates else None
        return self.macs(full, gates)[0]

    def minimum_macs(self) -> float:
        """The cheapest this model can get: every stage at P + min_keep tokens and, with static gates, every
        sub-block removed except one head of the attention layers that score tokens. No budget can go lower."""
        geom = self.geometry()
        fewest = self.fewest_tokens()
        if self.static_gates is None:
            return float(self.macs(fewest)[0])
        per_layer = tokens_per_layer(geom.num_tokens, geom.depth, self.stages, fewest)
        total = float(embed_and_head_macs(geom))
        for i in self.score_layers:
            total += float(layer_macs(per_layer[i], geom.embed_dim, geom.head_dim, 1, 0, mlp_on=0,
                                      context=self._context_tokens(i, per_layer[i], fewest, geom)))
        return total

    def fewest_tokens(self) -> torch.Tensor:
        """[1, S]: the fewest tokens (prefix included) each stage can leave: P + min_keep after a pruning stage, and
        P + |B| after the merge stage (B tokens never merge)."""
        least = [self.num_prefix + (self.geometry().num_patches // 2 if self.is_merge_stage(s) else self.min_keep)
                 for s in range(len(self.stages))]
        return torch.tensor([least], dtype=torch.float64)

    def _context_tokens(self, layer: int, tokens, counts: torch.Tensor, geom: Geometry):
        """Context rows layer `layer` reads when it runs `tokens` tokens (context mode): every token not among them,
        except those a merge stage merged away (counts [B, S]: the kept tokens after each stage)."""
        if self.dropped_tokens != "context":
            return 0
        if self.merge_block is None:
            return geom.num_tokens - tokens
        return counts[:, 0] - tokens if layer >= self.merge_block else 0

    # ---- slicing -------------------------------------------------------------------------------------------
    def sliced(self) -> "GatedViT":
        """A copy with closed heads, channels and sub-blocks physically removed, and no static gates."""
        if self.static_gates is None:
            return copy.deepcopy(self)
        model = copy.deepcopy(self)
        gates = model.static_gates
        for i, block in enumerate(model.vit.blocks):
            heads, channels, attn, mlp = (t.cpu() for t in gates.hard(i))
            if not bool(attn):
                remove_attention(block)
            elif not bool(heads.all()):
                slice_heads(block.attn, heads.nonzero().flatten())
            if not bool(mlp):
                remove_mlp(block)
            elif not bool(channels.all()):
                slice_channels(block.mlp, channels.nonzero().flatten())
            if model.group_gates is not None:  # a removed attention keeps no head rows (load_student builds 2 + 0)
                _slice_router(model.group_gates.routers[i], heads if bool(attn) else torch.zeros_like(heads))
        model.static_gates = None
        return model


class StageOutput(NamedTuple):
    """What one stage of `GatedViT.forward_dropped` hands to the blocks after it."""

    x: torch.Tensor  # [B, K, C] kept tokens, padded
    lengths: torch.Tensor  # [B] int32, prefix included
    context: Optional[Context]  # context mode: the frozen tokens so far
    sizes: Optional[torch.Tensor]  # [B, K] after a merge stage: the input tokens each kept row stands for


def _split_sizes(rows: torch.Tensor, has_sizes: bool, lengths: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Rows that carry their sizes as a last channel -> (rows, sizes), padding rows sized 1 (log 1 = 0, and no 0 to
    take the log of; their keys are masked anyway)."""
    if not has_sizes:
        return rows, None
    valid = token_ops.key_valid_from_lengths(lengths, rows.shape[1])
    return rows[..., :-1], torch.where(valid, rows[..., -1], torch.ones_like(rows[..., -1]))


def _slice_router(router: nn.Linear, heads: torch.Tensor) -> None:
    rows = torch.cat([torch.tensor([0, 1]), 2 + heads.nonzero().flatten()])
    with torch.no_grad():
        weight, bias = router.weight[rows].clone(), router.bias[rows].clone()
    router.weight, router.bias = nn.Parameter(weight), nn.Parameter(bias)
    router.out_features = len(rows)

"""ToMe-style token merging (Bolya et al., 2023) on a dense model's own timm blocks: the training-free baseline that
`tokengate calibrate` measures next to its thresholds at the same GFLOPs.

In every block with a merge count r > 0, after the attention and before the MLP, bipartite soft matching merges r
patch tokens: the patch tokens alternate between a set A and a set B, each A token is paired with its most similar
B token (cosine similarity of the block's keys, averaged over heads), and the A tokens of the r most similar pairs
are averaged into their B partners, weighted by how many input tokens each row already stands for (its size).
Proportional attention adds log(size) to every attention logit over a row, so a merged row draws the attention its
members would. Prefix tokens (class, distillation, registers) are never merged.

The forward loops over the dense model's timm blocks and calls their own layers; timm's attention forward takes the
log-size bias as its `attn_mask`, and the keys are read off the block's qkv projection by a forward hook, so no timm
forward is copied and nothing is computed twice. The MACs are `pipeline.flops.layer_macs` at each block's token
counts (attention over the tokens that enter, MLP over those left after the merge) plus the matching itself.
`calib.tome_export` writes it as an ONNX file, timed beside the calibrated model's (`tokengate calibrate`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from pipeline.data import Dataset, Split
from pipeline.errors import fail
from pipeline.evaluate import EvalResult, count_params
from pipeline.flops import Geometry, embed_and_head_macs, gmacs, layer_macs
from pipeline.models import GatedViT, token_ops
from pipeline.progress import progress


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int,
                    num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` patch tokens of every sample by bipartite soft matching.

    Args:
        x: [B, N, C] tokens; size: [B, N] input tokens each row stands for; metric: [B, N, d] matching features.
        r: merges, at most `max_merges(N - num_prefix)`.
    Returns:
        [B, N - r, C] rows (prefix, the unmerged A tokens in their order, then the B tokens) and their sizes.

    Written with masks and ranks rather than a sort, so that its ONNX export (`calib.tome_export`) breaks ties
    between equal similarities exactly as here (the lower index first): identical background patches are common.
    """
    if r <= 0:
        return x, size
    patches = x.shape[1] - num_prefix
    if r > max_merges(patches):
        raise ValueError(f"{r} merges of {patches} patch tokens")
    best, partner = token_ops.best_partners(metric, num_prefix)
    merged = token_ops.top_rank_mask(best, r)  # the r most similar A tokens
    xa, xb = x[:, num_prefix:][:, 0::2], x[:, num_prefix:][:, 1::2]
    sa, sb = size[:, num_prefix:][:, 0::2], size[:, num_prefix:][:, 1::2]
    xb, sb = token_ops.merge_sets(xa, xb, sa, sb, merged, partner)
    left = merged.logical_not()  # the other A rows, in their order: a static count, |A| - r
    kept_a, _ = token_ops.compact_kept(torch.cat([xa, sa[..., None]], dim=-1), left, left.sum(dim=1), 0,
                                       xa.shape[1] - r)
    return (torch.cat([x[:, :num_prefix], kept_a[..., :-1], xb], dim=1),
            torch.cat([size[:, :num_prefix], kept_a[..., -1], sb], dim=1))


def max_merges(patches: int) -> int:
    """The most merges one block makes: half its patch tokens (every B token can absorb an A token)."""
    return patches // 2


def _keys(attn, qkv: torch.Tensor) -> torch.Tensor:
    """The block's keys [B, N, head_dim], averaged over heads: ToMe's matching feature."""
    batch, tokens, _ = qkv.shape
    k = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim)[:, :, 1]
    return attn.k_norm(k).mean(dim=2)


@torch.no_grad()
def tome_forward(model: GatedViT, images: torch.Tensor, merges: Sequence[int]) -> torch.Tensor:
    """Logits of the dense `model` with merges[l] patch tokens merged in block l."""
    return merging_logits(model, images, merges)


def merging_logits(model: GatedViT, images: torch.Tensor, merges: Sequence[int]) -> torch.Tensor:
    """`tome_forward` without its no_grad wrapper, which torch.export would keep as a region of its own."""
    check_merges(model, merges)
    x = model.embed(images)
    size = x.new_ones(x.shape[:2])
    for layer, (block, r) in enumerate(zip(model.vit.blocks, merges)):
        captured = []
        hook = block.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:  # every size is 1 until a block has merged (known from the counts, so the export has no branch)
            bias = size.log()[:, None, None, :] if any(merges[:layer]) else None
            out = block.attn(block.norm1(x), attn_mask=bias)
        finally:
            hook.remove()
        x = x + block.drop_path1(block.ls1(out))
        x, size = bipartite_merge(x, size, _keys(block.attn, captured[0]), int(r), model.num_prefix)
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return model.head(x)


def check_merges(model: GatedViT, merges: Sequence[int]) -> None:
    """A dense model, one count per block, and no block merging more than half its patch tokens."""
    if model.static_gates is not None or model.group_gates is not None or \
            any(b.attn is None or b.mlp is None for b in model.vit.blocks):
        raise fail("token merging runs a dense model", "pass a run directory: its teacher is used")
    geom = model.geometry()
    if len(merges) != geom.depth:
        raise fail(f"{len(merges)} merge counts for a {geom.depth}-block model", "give one count per block")
    patches = geom.num_patches
    for layer, r in enumerate(merges):
        if not 0 <= r <= max_merges(patches):
            raise fail(f"block {layer} merges {r} of its {patches} patch tokens",
                       f"merge between 0 and {max_merges(patches)} there")
        patches -= r


def merge_macs(patches: int, dim: int, head_dim: int) -> int:
    """MACs of one block's matching: the keys averaged over heads (patches * dim), every A token's cosine similarity
    with every B token (|A| * |B| * head_dim) and the size-weighted sums of the merged rows (patches * dim)."""
    return 2 * patches * dim + ((patches + 1) // 2) * (patches // 2) * head_dim


def block_tokens(geom: Geometry, merges: Sequence[int]) -> list[tuple[int, int]]:
    """(tokens into the attention, tokens into the MLP) of each block, prefix included."""
    out, tokens = [], geom.num_tokens
    for r in merges:
        out.append((tokens, tokens - int(r)))
        tokens -= int(r)
    return out


def tome_macs(geom: Geometry, merges: Sequence[int]) -> int:
    """MACs per image with merges[l] merges in block l, by `pipeline.flops`' per-layer formulas."""
    total = embed_and_head_macs(geom)
    for layer, ((attn_tokens, mlp_tokens), r) in enumerate(zip(block_tokens(geom, merges), merges)):
        heads, hidden = geom.heads[layer], geom.mlp_hidden[layer]
        total += layer_macs(attn_tokens, geom.embed_dim, geom.head_dim, heads, hidden, attn_on=1, mlp_on=0)
        if r:
            total += merge_macs(attn_tokens - geom.num_prefix, geom.embed_dim, geom.head_dim)
        total += layer_macs(mlp_tokens, geom.embed_dim, geom.head_dim, heads, hidden, attn_on=0, mlp_on=1)
    return int(total)


@torch.no_grad()
def evaluate_tome(model: GatedViT, dataset: Dataset, split: Split, merges: Sequence[int], batch_size: int = 256,
                  show_progress: bool = True, desc: str = "merging val") -> EvalResult:
    """Top-1 and GFLOPs over a whole split, as `pipeline.evaluate.evaluate` reports them; `mean_kept` holds the
    tokens (prefix included) that leave each block."""
    model = model.eval()
    correct = total = 0
    batches = dataset.batches(split, batch_size)
    for images, labels in progress(batches, total=-(-len(split) // batch_size), desc=desc,
                                   disable=not show_progress, leave=False):
        correct += int((tome_forward(model, images, merges).argmax(-1) == labels).sum())
        total += len(labels)
    geom = model.geometry()
    return EvalResult(top1=100.0 * correct / max(total, 1), gflops=gmacs(tome_macs(geom, merges)),
                      params=count_params(model), mean_kept=[float(m) for _, m in block_tokens(geom, merges)],
                      images=total)

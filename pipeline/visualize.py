"""`tokengate visualize`: which patches each token stage keeps, drawn over the images (dropped patches dimmed; a
merge stage's merged patches too: each is averaged into a kept neighbour).

The kept set per stage is recomputed with the model's own pieces in `forward_dropped`'s order, carrying each
surviving token's original patch index through the same compaction (`token_ops.compact_kept`; the stage itself is the
model's `select_stage`, context tokens included), so the picture shows exactly what the deployed model keeps;
`kept_patches` checks its counts against `forward_dropped`'s.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import save_png
from pipeline.models import GatedViT, token_ops

CELL_INCHES = 1.6
DPI = 100
DIM = 0.22  # brightness left to dropped patches


@torch.no_grad()
def kept_patches(model: GatedViT, images: torch.Tensor) -> torch.Tensor:
    """[B, S, num_patches] bool: the patches still present after each token stage."""
    model = model.eval()
    x = model.embed(images)
    prefix, batch = model.num_prefix, x.shape[0]
    patches = x.shape[1] - prefix
    origin = torch.arange(patches, dtype=x.dtype).expand(batch, patches)[..., None]  # each token's patch index
    valid, scores, context, sizes, masks, lengths_all = None, None, None, None, [], []
    for i, block in enumerate(model.vit.blocks):
        if i in model.stages:
            s = model.stages.index(i)
            scores, partner = model.stage_inputs(s, x, scores)
            keep = model.stage_keep_mask(s, scores, model.thresholds[s])
            x, lengths, context, sizes = model.select_stage(s, x, valid, scores, context, model.thresholds[s], sizes,
                                                            partner)
            padded_origin = torch.cat([origin.new_zeros(batch, prefix, 1), origin], dim=1)
            width = x.shape[1] - prefix
            origin = token_ops.compact_kept(padded_origin, keep, keep.sum(dim=1), prefix, width)[0][:, prefix:]
            valid = token_ops.key_valid_from_lengths(lengths, x.shape[1])
            mask = torch.zeros(batch, patches, dtype=torch.bool)
            present = valid[:, prefix:]
            rows = torch.arange(batch)[:, None].expand_as(present)
            mask[rows[present], origin[..., 0].long()[present]] = True
            masks.append(mask)
            lengths_all.append(lengths)
        gates = model.block_gates(i, x[:, 0], None)
        x, scores = block.forward_gated(x, valid, None, gates, prefix, i in model.score_layers, context, sizes=sizes)
    expected = model.forward_dropped(images)[1]
    if lengths_all and not torch.equal(torch.stack(lengths_all, dim=1), expected):
        raise RuntimeError("kept_patches disagrees with forward_dropped on the kept counts")
    return torch.stack(masks, dim=1) if masks else torch.zeros(batch, 0, patches, dtype=torch.bool)


def dim_dropped(image: np.ndarray, keep: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """image float [H, W, 3] in [0, 1]; keep bool [grid_h * grid_w] -> dropped patches dimmed."""
    height, width = image.shape[:2]
    block = keep.reshape(grid).astype(np.float32)
    factor = np.kron(block, np.ones((height // grid[0], width // grid[1]), dtype=np.float32))
    factor = DIM + (1 - DIM) * factor
    return image * factor[..., None]


def figure_pixels(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of the PNG for `rows` images and `cols` columns (the input plus one per stage)."""
    return int(round(cols * CELL_INCHES * DPI)), int(round(rows * CELL_INCHES * DPI))


def stage_titles(model: GatedViT) -> list[str]:
    """Each stage's column title, blocks counted from 1: a merge stage says so (its dimmed patches are merged into
    a neighbour, not dropped)."""
    return [f"{'merge' if model.is_merge_stage(s) else 'prune'} before block {block + 1}"
            for s, block in enumerate(model.stages)]


def draw_tokens(raw: torch.Tensor, masks: torch.Tensor, names: list[str], titles: list[str],
                grid: tuple[int, int], path: str | Path, title: str) -> Path:
    """One row per image, one column per stage (after the input, titled `titles`), dropped patches dimmed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = raw.shape[0], 1 + masks.shape[1]
    width, height = figure_pixels(rows, cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    total = grid[0] * grid[1]
    for r in range(rows):
        image = raw[r].permute(1, 2, 0).float().numpy() / 255.0
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
        panels = [image] + [dim_dropped(image, masks[r, s].numpy(), grid) for s in range(masks.shape[1])]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = names[r] if c == 0 else f"{int(masks[r, c - 1].sum())}/{total} left"
            ax.set_xlabel(label, fontsize=7, labelpad=2)
            if r == 0:
                ax.set_title("input" if c == 0 else titles[c - 1], fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(width / 6.5)), fontsize=8)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=1 - 0.5 / rows, wspace=0.05, hspace=0.3)
    return save_png(fig, path, DPI)


def visualize(source: str | Path, out: str | Path, count: int = 6, run_root: str | Path = "runs/bench",
              show: bool = True) -> Path:
    """Draw the kept tokens of a run's student over `count` images: a trained run's validation images, or for a
    config the student of the run directory `tokengate bench` writes for it (under `run_root`) over the photos its
    thresholds were fitted on."""
    from pipeline.bench.prepare import bench_run, keep_ratios_of
    from pipeline.bench.target import load_target
    from pipeline.errors import fail
    from pipeline.images import load_images
    from pipeline.models import load_student

    if count < 1:
        raise fail(f"--images {count} must be positive", "e.g. --images 6")
    target = load_target(source)
    run_dir = bench_run(target, Path(run_root), show)
    model = load_student(run_dir)
    if not model.stages:
        raise fail(f"the student of {run_dir} has no token stages to draw", "train it with gates.token_stages")
    images = load_images(target.cfg, target.spec.images, count, target.spec.seed)
    masks = kept_patches(model, images.inputs[:count])
    grid = model.vit.patch_embed.grid_size
    with torch.no_grad():
        ratios = keep_ratios_of(model.forward_dropped(images.inputs)[1], model.num_prefix, int(masks.shape[-1]))
    gone = "merged or dropped" if model.merge_block is not None else "dropped"
    title = (f"{target.name}: the student's patches left after each stage ({gone} dimmed); mean keep ratios "
             f"{', '.join(f'{r:.2f}' for r in ratios)} on these {len(images)} images")
    return draw_tokens(images.raw[:count], masks, images.names[:count], stage_titles(model), tuple(grid), out,
                       title)

"""Why training-free pruning costs what it costs on a model: one set of fixed per-stage token counts, run under
several token rankings and with or without fusing the dropped tokens.

    python -m tools.ablation RUN --counts 49,15,13 [--counts ...] [--set data.val_limit=2000] [--json F]

Rankings: `attention` (the pipeline's score: class attention weighted by each head's output norm), `uniform-heads`
(plain mean over heads), `random`, and `inverse` (drop the best-scored tokens first). If `attention` is far above
`random` and `inverse`, the score does its job and the loss comes from the token budget itself.

Fusion is EViT's remedy: the dropped tokens are averaged, weighted by their class attention, into one extra token,
and attention gets ToMe's proportional bias (log of the number of tokens a row stands for), so a fused token draws
the attention its members drew. It is measured here only; the deployed TokenSelect contract has no fused token.

The forward runs the dense model's own timm layers (timm's attention forward, with the bias as its `attn_mask`);
with the `attention` ranking and no fusion it equals the pipeline's fixed-rate model (`calib.baseline.fixed_model`)
to float rounding (tests/tools/test_ablation.py).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from pipeline.data import Dataset, Split
from pipeline.errors import TokenGateError, fail
from pipeline.models import GatedViT, token_ops
from pipeline.progress import progress

RANKINGS = ("attention", "uniform-heads", "random", "inverse")


@dataclass(frozen=True)
class Setting:
    counts: tuple[int, ...]  # patch tokens kept at each stage (fused token not counted)
    ranking: str = "attention"
    fuse: bool = False


def _attention(block, x: torch.Tensor, log_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block attention with an additive per-key bias; returns (output, class attention [B, H, N], each head's
    class-token output [B, H, d]). The output is timm's own forward; the class row is the pipeline's
    `token_ops.class_attention` over the same keys and bias."""
    attn = block.attn
    out = attn(x, attn_mask=log_size[:, None, None, :])
    batch, tokens, _ = x.shape
    q, k, v = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    cls_attn, head_out = token_ops.class_attention(attn.q_norm(q)[:, :, 0], attn.k_norm(k), v, attn.scale, None,
                                                   key_bias=log_size[:, None, :])
    return out, cls_attn, head_out


def _scores(cls_attn: torch.Tensor, head_out: torch.Tensor, prefix: int, ranking: str,
            generator: torch.Generator) -> torch.Tensor:
    """[B, N - prefix] patch scores; `attention` is the pipeline's own score (token_ops)."""
    if ranking == "uniform-heads":
        return cls_attn.mean(dim=1)[:, prefix:]
    scores = token_ops.token_scores(cls_attn, token_ops.head_importance(head_out), prefix, None)
    if ranking == "random":
        return torch.rand(scores.shape, generator=generator)
    return -scores if ranking == "inverse" else scores


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.gather(1, index) if t.dim() == 2 else t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


@torch.no_grad()
def ablation_forward(model: GatedViT, images: torch.Tensor, setting: Setting,
                     generator: torch.Generator) -> torch.Tensor:
    """Logits of the dense `model` with `setting.counts` patch tokens kept at its stages."""
    blocks, stages, prefix = model.vit.blocks, list(model.stages), model.num_prefix
    x = model.embed(images)
    size = torch.ones(x.shape[:2])  # how many input tokens each row stands for
    cls_attn = head_out = None
    for i, block in enumerate(blocks):
        if i in stages:
            scores = _scores(cls_attn, head_out, prefix, setting.ranking, generator)
            if setting.fuse:
                scores = scores / size[:, prefix:]  # rank a fused row by its members' mean attention
            order = scores.sort(dim=1, descending=True, stable=True).indices + prefix
            count = setting.counts[stages.index(i)]
            keep, drop = order[:, :count], order[:, count:]
            rows, sizes = [x[:, :prefix], _take(x, keep)], [size[:, :prefix], _take(size, keep)]
            if setting.fuse and drop.shape[1]:
                mass = _take(cls_attn.mean(dim=1), drop)
                rows.append((_take(x, drop) * mass[..., None]).sum(1, keepdim=True)
                            / mass.sum(1, keepdim=True)[..., None].clamp_min(1e-12))
                sizes.append(_take(size, drop).sum(1, keepdim=True))
            x, size = torch.cat(rows, 1), torch.cat(sizes, 1)
        out, cls_attn, head_out = _attention(block, block.norm1(x), size.log())
        x = x + block.ls1(out)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.head(x)


def check_setting(model: GatedViT, setting: Setting) -> None:
    if model.static_gates is not None or model.group_gates is not None or \
            any(b.attn is None or b.mlp is None for b in model.vit.blocks):
        raise fail("the ablation runs a dense model", "pass a run directory: its teacher is used")
    if setting.ranking not in RANKINGS:
        raise fail(f"unknown ranking {setting.ranking!r}", f"use one of {', '.join(RANKINGS)}")
    patches = model.geometry().num_patches
    if len(setting.counts) != len(model.stages) or any(not 1 <= c <= patches for c in setting.counts):
        raise fail(f"--counts {','.join(map(str, setting.counts))} must give {len(model.stages)} stage counts "
                   f"between 1 and {patches}", f"e.g. --counts {','.join(['25'] * len(model.stages))}")


def ablation_top1(model: GatedViT, dataset: Dataset, split: Split, setting: Setting, batch_size: int = 500,
                  seed: int = 0) -> float:
    """Top-1 (%) on `split` under `setting`."""
    check_setting(model, setting)
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    batches = dataset.batches(split, batch_size)
    for images, labels in progress(batches, total=-(-len(split) // batch_size), desc=_label(setting), leave=False):
        correct += int((ablation_forward(model, images, setting, generator).argmax(-1) == labels).sum())
    return 100.0 * correct / max(len(split), 1)


def _label(setting: Setting) -> str:
    return f"{','.join(map(str, setting.counts))} {setting.ranking}{' +fusion' if setting.fuse else ''}"


def ablation_table(model: GatedViT, dataset: Dataset, split: Split, counts: Sequence[tuple[int, ...]]) -> list[dict]:
    """Every ranking without fusion, and the attention ranking with fusion, for each count tuple."""
    rows = []
    for c in counts:
        for setting in [Setting(tuple(c), r) for r in RANKINGS] + [Setting(tuple(c), "attention", fuse=True)]:
            rows.append({"counts": list(setting.counts), "ranking": setting.ranking, "fuse": setting.fuse,
                         "top1": ablation_top1(model, dataset, split, setting)})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    from calib.calibrate import calibrated_config
    from calib.source import resolve_source
    from pipeline.artifacts import write_json
    from pipeline.data import load_dataset
    from pipeline.models import build_student

    parser = argparse.ArgumentParser(prog="python -m tools.ablation", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory; its dense teacher is used")
    parser.add_argument("--counts", action="append", required=True,
                        help="patch tokens kept per stage, e.g. 49,15,13 (repeat for several)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="data override, e.g. data.val_limit=2000")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        try:
            counts = [tuple(int(v) for v in c.split(",")) for c in args.counts]
        except ValueError:
            raise fail(f"--counts {args.counts} must be comma-separated integers", "e.g. --counts 49,15,13") from None
        source = resolve_source(args.run, overrides=args.set)
        cfg = calibrated_config(source, 1.0, "discard", merge_block=None)  # token stages only: the ablation drops
        # tokens itself
        model = build_student(cfg, weights_from=source.teacher, static_gates=False).eval()
        dataset = load_dataset(cfg.data, cfg.model)
        rows = ablation_table(model, dataset, dataset.val, counts)
    except TokenGateError as exc:
        print(f"python -m tools.ablation: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(dataset.val)} validation images, stages before blocks {list(model.stages)}")
    print("| counts | ranking | fused | top-1 |\n|---|---|---|---|")
    for r in rows:
        fused = "yes" if r["fuse"] else "no"
        print(f"| {','.join(map(str, r['counts']))} | {r['ranking']} | {fused} | {r['top1']:.2f} |")
    if args.json:
        write_json(args.json, {"run": args.run, "images": len(dataset.val), "stages": list(model.stages), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

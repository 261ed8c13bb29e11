"""Training-free compression on a geometry without labelled data: fidelity to the dense model, not top-1.

    python -m tools.fidelity CONFIG [--budgets 0.5,0.6,0.7,0.8] [--images 96] [--grid 3] [--json fidelity.json]

The config's dense model (its checkpoint, or timm's seeded random init) is compressed at each budget by what
`tokengate calibrate` fits: the merge stage plus thresholds (the calibrated default), the thresholds alone, the
min-KL fixed-rate split and the ToMe-style merging baseline, each with calibrate's own search code and criterion
(lowest KL from dense at the budget). Half of the bench photos (`bench.images`, crops and flips) calibrate, the other
half measure: KL(dense || model) per image and the share of images whose top-1 class equals the dense model's. With
random weights neither is an accuracy, but both say how much of the dense model's output a method keeps.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from pipeline.config import load_config
from pipeline.images import load_images
from pipeline.models import GatedViT, build_student, build_teacher

from calib.baseline import FixedRateSearch, fixed_model
from calib.cost import reference_macs
from calib.search import ThresholdSearch, fidelity_to_dense
from calib.tome import tome_forward, tome_macs
from calib.tome_search import MergeSearch


def fidelity(logits: torch.Tensor, dense: torch.Tensor) -> dict:
    kl, agreement = fidelity_to_dense(logits, dense)
    return {"kl": kl, "agreement": agreement}


def batched(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, size: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([forward(chunk) for chunk in images.split(size)])


def measure(cfg_path: str, budgets: Sequence[float], count: int, grid: int, seed: int = 0) -> dict:
    cfg = load_config(cfg_path)
    cfg = replace(cfg, gates=replace(cfg.gates, static=False, dynamic="none", dropped_tokens="context"))
    torch.manual_seed(seed)
    teacher = build_teacher(cfg).eval()
    images = load_images(cfg, "sample-photos", count, cfg.bench.seed).inputs
    calib, held = images[0::2], images[1::2]
    dense_calib, dense_held = batched(teacher.forward, calib), batched(teacher.forward, held)
    reference = reference_macs(teacher)

    def student(merge_block: Optional[int]) -> GatedViT:
        return build_student(replace(cfg, gates=replace(cfg.gates, merge_block=merge_block)), weights_from=teacher,
                             static_gates=False).eval()

    merged, plain = student(0), student(None)
    searches = {"merge stage + thresholds": ThresholdSearch(merged, calib, dense_calib, reference),
                "thresholds": ThresholdSearch(plain, calib, dense_calib, reference)}
    fixed = FixedRateSearch(plain, calib, dense_calib, reference)
    tome = MergeSearch(teacher, calib, dense_calib, reference)
    rows = []
    for budget in budgets:
        row = {"budget": budget}
        for name, search in searches.items():
            best = search.search(budget, grid, progress=False).best
            with torch.no_grad():
                search.model.thresholds.copy_(torch.tensor(best.thresholds))
                logits, lengths = (torch.cat(t) for t in zip(*(search.model.forward_dropped(c)
                                                                for c in held.split(16))))
            cost = float(search.model.macs(lengths.double()).mean()) / reference
            row[name] = {"gflops_ratio": cost, **fidelity(logits, dense_held)}
        split = fixed.search(row["thresholds"]["gflops_ratio"], progress=False).best
        counted = fixed_model(plain, split.counts)  # built once, not per batch
        row["fixed-rate top-k"] = {"gflops_ratio": split.ratio, "counts": list(split.counts),
                                   **fidelity(batched(lambda c: counted.forward_dropped(c)[0], held), dense_held)}
        merging = tome.search(row["merge stage + thresholds"]["gflops_ratio"], progress=False)
        if merging is not None:
            merges = merging.best.merges
            row["ToMe-style merging"] = {"gflops_ratio": tome_macs(teacher.geometry(), merges) / reference,
                                         "merges": list(merges),
                                         **fidelity(batched(lambda c: tome_forward(teacher, c, merges), held),
                                                    dense_held)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"config": cfg_path, "arch": cfg.model.arch, "images": {"calibration": len(calib), "measured": len(held)},
            "weights": cfg.model.checkpoint or "random (timm's init, seeded)", "grid": grid, "rows": rows}


def table(report: dict) -> str:
    methods = [k for k in report["rows"][0] if k != "budget"]
    lines = ["| budget | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for row in report["rows"]:
        cells = [f"{row[m]['kl']:.4f} / {100 * row[m]['agreement']:.1f}% @ {row[m]['gflops_ratio']:.3f}"
                 if m in row else "-" for m in methods]
        lines.append(f"| {row['budget']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--budgets", default="0.5,0.6,0.7,0.8")
    parser.add_argument("--images", type=int, default=96, help="bench photos: half calibrate, half measure")
    parser.add_argument("--grid", type=int, default=3, help="the thresholds' profile grid (calibrate's --grid)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = measure(args.config, [float(b) for b in args.budgets.split(",")], args.images, args.grid)
    print("KL(dense || model) / top-1 agreement with dense @ GFLOPs ratio, on the held-out photos")
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

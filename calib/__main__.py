"""python -m calib build-default | build | show: make and inspect calibration sets.

    python -m calib build-default                      # calib/sets/fmnist-default: 20 per class, Fashion-MNIST train
    python -m calib build --image-folder DIR --size 224 --out calib/sets/mine [--per-class 20] [--seed 0]
    python -m calib build --fashion-mnist ROOT --out calib/sets/fm50 --per-class 50
    python -m calib show calib/sets/fmnist-default
    python -m calib ablate runs/fmnist-tiny --counts 49,15,13 [--counts ...] [--set data.val_limit=2000] [--json F]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.errors import TokenGateError, fail

from calib import sets


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    default = sub.add_parser("build-default", help="build the default set (idempotent; make setup runs it)")
    default.add_argument("--root", default=sets.DEFAULT_FMNIST_ROOT, help="Fashion-MNIST folder (*-ubyte.gz)")
    default.add_argument("--out", default=str(sets.SETS_DIR / sets.DEFAULT_NAME))
    build = sub.add_parser("build", help="build a set from an ImageFolder or Fashion-MNIST")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--image-folder", help="folder with one sub-folder of images per class (or train/ + val/)")
    source.add_argument("--fashion-mnist", metavar="ROOT", help="folder holding Fashion-MNIST's *-ubyte.gz files")
    build.add_argument("--out", required=True, help="set folder to write, e.g. calib/sets/mine")
    build.add_argument("--size", type=int, default=224, help="ImageFolder: decode to SIZE x SIZE RGB (default 224)")
    build.add_argument("--name", default=None, help="set name in the manifest (default: the folder's name)")
    for p in (default, build):
        p.add_argument("--per-class", type=int, default=sets.DEFAULT_PER_CLASS)
        p.add_argument("--seed", type=int, default=sets.DEFAULT_SEED)
    show = sub.add_parser("show", help="print a set's manifest summary and verify its hashes")
    show.add_argument("set", nargs="?", default="default")
    ablate = sub.add_parser("ablate", help="top-1 at fixed token counts per ranking, and with fused dropped tokens "
                                           "(calib/ablation.py): where a training-free loss comes from")
    ablate.add_argument("run", help="run directory; its dense teacher is used")
    ablate.add_argument("--counts", action="append", required=True,
                        help="patch tokens kept per stage, e.g. 49,15,13 (repeat for several)")
    ablate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="data override, e.g. data.val_limit=2000")
    ablate.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        commands = {"build-default": _build_default, "build": _build, "show": _show, "ablate": _ablate}
        return commands[args.command](args)
    except TokenGateError as exc:
        print(f"python -m calib {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _build_default(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest, images, labels = sets.build_fashion_mnist(args.root, args.per_class, args.seed, name=out.name)
    if (out / "manifest.json").is_file():
        try:
            if sets.load_set(out).manifest.digest == manifest.digest:
                print(f"calibration set {manifest.id} is up to date in {out}")
                return 0
        except TokenGateError:
            pass  # unreadable or changed: rebuild it
    sets.save_set(out, manifest, images, labels)
    print(f"wrote calibration set {manifest.id}: {len(labels)} images ({args.per_class} per class) to {out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    name = args.name or out.name
    if args.image_folder:
        manifest, images, labels = sets.build_image_folder(args.image_folder, args.size, args.per_class, args.seed,
                                                           name)
    else:
        manifest, images, labels = sets.build_fashion_mnist(args.fashion_mnist, args.per_class, args.seed, name)
    sets.save_set(out, manifest, images, labels)
    counts = ", ".join(str(c) for c in manifest.counts)
    print(f"wrote calibration set {manifest.id}: {len(labels)} images (per class: {counts}) to {out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    cal = sets.load_set(args.set)
    m = cal.manifest
    if not len(cal):
        raise fail(f"{cal.folder} is empty", "rebuild it")
    print(f"{m.id}  {len(cal)} images {tuple(m.image_shape)} from {m.source}")
    print(f"seed {m.seed}, per class {m.per_class}: " + ", ".join(f"{c}={n}" for c, n in zip(m.classes, m.counts)))
    print(f"digest {m.digest}  arrays {m.arrays_sha256}  (verified)")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from pipeline.artifacts import write_json
    from pipeline.data import load_dataset
    from pipeline.models import build_student

    from calib.ablation import ablation_table
    from calib.calibrate import calibrated_config
    from calib.source import resolve_source

    try:
        counts = [tuple(int(v) for v in c.split(",")) for c in args.counts]
    except ValueError:
        raise fail(f"--counts {args.counts} must be comma-separated integers", "e.g. --counts 49,15,13") from None
    source = resolve_source(args.run, overrides=args.set)
    cfg = calibrated_config(source, 1.0, "discard")  # token stages only; the ablation drops tokens itself
    model = build_student(cfg, weights_from=source.teacher, static_gates=False).eval()
    dataset = load_dataset(cfg.data, cfg.model)
    rows = ablation_table(model, dataset, dataset.val, counts)
    print(f"{len(dataset.val)} validation images, stages before blocks {list(model.stages)}")
    print("| counts | ranking | fused | top-1 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {','.join(map(str, r['counts']))} | {r['ranking']} | {'yes' if r['fuse'] else 'no'} | {r['top1']:.2f} |")
    if args.json:
        write_json(args.json, {"run": args.run, "images": len(dataset.val), "stages": list(model.stages), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

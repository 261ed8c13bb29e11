"""python -m calib build-default | build | show: make and inspect calibration sets.

    python -m calib build-default                      # calib/sets/fmnist-default: 20 per class, Fashion-MNIST train
    python -m calib build --image-folder DIR --size 224 --out calib/sets/mine [--per-class 20] [--seed 0]
    python -m calib build --fashion-mnist ROOT --out calib/sets/fm50 --per-class 50
    python -m calib show calib/sets/fmnist-default
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
    args = parser.parse_args(argv)
    try:
        commands = {"build-default": _build_default, "build": _build, "show": _show}
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


if __name__ == "__main__":
    sys.exit(main())

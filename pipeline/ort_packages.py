"""Exactly one ONNX Runtime build per environment.

`onnxruntime` (CPU) and `onnxruntime-gpu` both install the Python module `onnxruntime`; with both present, the one
installed last silently wins and uninstalling either breaks the other. `make setup` removes the other build before
installing its profile's, then runs this check, which fails with the repair command if the environment still mixes
them.

    python -m pipeline.ort_packages --expect onnxruntime-gpu
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Callable, Optional, Sequence

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
PROFILE_DISTRIBUTION = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def installed_ort(version_of: Callable[[str], str] = metadata.version) -> dict[str, str]:
    """{distribution: version} for every ONNX Runtime build installed in this environment."""
    found = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            found[name] = version_of(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def problem(found: dict[str, str], expect: Optional[str]) -> Optional[str]:
    """What is wrong with `found` (None when it is exactly the expected build), with the repair command."""
    if len(found) > 1:
        keep = expect or "onnxruntime"
        return (f"both onnxruntime builds are installed ({', '.join(f'{n}=={v}' for n, v in found.items())}); they "
                f"share one module. Fix: pip uninstall -y {' '.join(ORT_DISTRIBUTIONS)} && "
                f"pip install --force-reinstall {keep}")
    if expect and expect not in found:
        other = f" ({next(iter(found))} is installed instead)" if found else ""
        return f"{expect} is not installed{other}. Fix: pip install {expect}, or rerun make setup"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ort_packages", description=__doc__.splitlines()[0])
    parser.add_argument("--expect", choices=ORT_DISTRIBUTIONS, default=None)
    args = parser.parse_args(argv)
    found = installed_ort()
    why = problem(found, args.expect)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    print("ONNX Runtime build: " + (", ".join(f"{n} {v}" for n, v in found.items()) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`tokengate`: one subcommand per pipeline stage. Each lives in pipeline/commands/<name>.py.

User errors (`TokenGateError`) print one line and exit with status 2; nothing else is caught, so a real bug still
shows its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from pipeline.errors import TokenGateError

COMMANDS = ("train", "export", "build", "validate", "bench", "visualize", "calibrate", "quantize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokengate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:  # every command module ships with the package; a missing one is a packaging bug
        importlib.import_module(f"pipeline.commands.{name}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TokenGateError as exc:
        print(f"tokengate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tokengate {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`sparse-expansion` command line: parses, calls the library, prints.

Each subcommand lives in `sparse_expansion.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None`.
Adding a command is one new module plus one line in COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UsageError

COMMANDS = (
    "prune",
    "expand",
    "evaluate",
    "generate",
    "demo",
    "train",
    "isoflop",
    "gating",
    "fpe",
    "neurons",
    "export", "lm_eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-expansion",
        description="Widen neural networks sparsely to untangle their neurons, and measure it.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"sparse_expansion.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one line on bad flags
    try:
        code = args.func(args)
    except UsageError as exc:
        print(f"sparse-expansion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

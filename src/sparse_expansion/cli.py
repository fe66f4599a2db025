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
from .io import release_reserved

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
    "ncen",
    "export",
    "convert",
    "lm_eval",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; our contract is one line on stderr."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sparse-expansion",
        description="Widen neural networks sparsely to untangle their neurons, and measure it.",
        epilog="example: sparse-expansion expand smollm2-135m --experts 4 --sparsity 0.5 --out runs/se4 && "
               "sparse-expansion eval runs/se4 --json   (COMMAND --help for each command's flags)",
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
    finally:
        release_reserved()  # the temporary folders of outputs the command did not get to write
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

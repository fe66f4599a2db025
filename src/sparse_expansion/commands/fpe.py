"""`sparse-expansion fpe`: fixed parameter expansion studies (DNF tasks and real data).

Parses the flags into a `fpe.studies.FPEStudyConfig`, calls `fpe.run.run_study`, prints the report.
The choices and help come from the registries (tasks, studies, split rules), read without torch.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..fpe.studies import FPEStudyConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..fpe.rules import RULES
    from ..fpe.studies import GROUPS, STUDIES, TASKS

    tasks = "; ".join(f"{t.name}: {t.summary}" for t in TASKS.values())
    studies = "; ".join([*(f"{s.name}: {s.summary}" for s in STUDIES.values()),
                         *(f"{name}: {' + '.join(parts)}" for name, parts in GROUPS.items())])
    rules = "; ".join(f"{r.name}: {r.summary}" for r in RULES.values())
    p = subparsers.add_parser(
        "fpe",
        help="fixed parameter expansion: split neurons, keep the non-zero count fixed",
        description=(
            "Train a dense MLP, split each hidden neuron into ALPHA children with disjoint input "
            "masks, prune back to the same non-zero count, keep training; compare with the dense "
            "baseline. Writes results.json, PNG plots and report.md into --out."
        ),
        epilog="example: sparse-expansion fpe --task dnf --study point --out runs/fpe_point",
    )
    p.add_argument("--task", choices=list(TASKS), required=True, help=tasks)
    p.add_argument("--study", choices=[*STUDIES, *GROUPS], default=None,
                   help=f"DNF only (default single). {studies}. A run with both sweeps also fits the "
                        "relative gain against clauses per neuron")
    p.add_argument("--alpha", type=int, default=None, help="children per neuron (default 2)")
    p.add_argument("--rule", default=None,
                   help=f"comma list of split rules (default: the study's; random for real data). {rules}")
    p.add_argument("--neurons", default=None,
                   help="DNF: parent hidden neurons (default 8); real data: comma list of parent widths to "
                        "split in the one-hidden-layer MLP (default 4,8,16; the deeper MLP splits 8,16)")
    p.add_argument("--clauses", type=int, default=None, help="DNF clauses of 3 literals (default 8)")
    p.add_argument("--depth", type=int, default=None,
                   help="real data: hidden layers of the deeper MLP (default 3; 1 = none)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1 (default 5)")
    p.add_argument("--epochs", default=None,
                   help="WARMUP,POST epochs (default 30,60 for dnf, 20,40 digits, 10,20 plays/bible)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--save-models", action="store_true",
                   help="also save every trained network as a model folder (default off)")
    p.add_argument("--out", required=True, help="new folder for results.json, PNGs and report.md (must not "
                                                "exist or be empty)")
    p.set_defaults(func=handler)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes integers separated by commas, got {text!r}") from None


def _epochs(text: str) -> tuple[int, int]:
    values = _ints(text, "--epochs")
    if len(values) != 2 or len(text.split(",")) != 2:
        raise UsageError(f"--epochs takes WARMUP,POST (two integers), got {text!r}")
    return values[0], values[1]


def _rules(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def config_from_args(args: argparse.Namespace) -> FPEStudyConfig:
    """The flags as the library's plain-valued config (not yet checked)."""
    from ..fpe.studies import FPEStudyConfig

    return FPEStudyConfig(
        task=args.task,
        study=args.study,
        rules=_rules(args.rule) if args.rule is not None else None,
        alpha=args.alpha,
        neurons=_ints(args.neurons, "--neurons") if args.neurons is not None else None,
        clauses=args.clauses,
        depth=args.depth,
        seeds=args.seeds,
        epochs=_epochs(args.epochs) if args.epochs is not None else None,
        threads=args.threads,
        save_models=args.save_models,
    )


def handler(args: argparse.Namespace) -> int:
    from ..io import check_output_dir

    config = config_from_args(args).check()  # every cheap check, before torch is imported
    check_output_dir(args.out)
    from ..fpe.run import run_study

    result = run_study(config, out=args.out)
    print(result.report)
    print(f"wrote {args.out}/results.json, report.md and plots"
          + (f", {len(result.models)} models" if result.models else ""))
    return 0

"""`sparse-expansion isoflop`: the isoflop study of sgatlin against its baselines."""

from __future__ import annotations

import argparse

from .. import runtime
from ..sgatlin.ffn_types import FFN_TYPES, types_help
from . import common


def _floats(text: str) -> list[float]:
    from ..errors import UsageError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "isoflop",
        help="train every FFN type at several scales per FLOP budget; table + plot",
        description="For each budget, train each FFN type at each scale (runs with fewer than "
                    "20 steps are skipped) and compare validation losses at equal training "
                    "FLOPs. Writes results.json, table.md, isoflop.png, ablation.md, runs/. "
                    "An interrupted study continues where it stopped when run again with the "
                    "same flags. FFN types: " + types_help() + ".",
    )
    p.add_argument("--budgets", required=True, help="comma-separated training FLOPs, e.g. 1e11,3e11")
    p.add_argument("--ffn", default=",".join(FFN_TYPES),
                   help=f"comma-separated FFN types (default: all, {','.join(FFN_TYPES)})")
    p.add_argument("--scales", default="0.5,1,1.5",
                   help="comma-separated scales, each a positive multiple of 0.5 (default 0.5,1,1.5)")
    p.add_argument("--ablation-budget", type=float, default=None,
                   help="also train sgatlin with GELU after the gate at this budget (default: no "
                        "ablation)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs in parallel, one process with one thread each (default 1)")
    common.add_training_arguments(p)
    p.add_argument("--out", required=True, help="new folder for the study")
    runtime.add_runtime_args(p, dtype_help="precision of every run's forward pass (autocast)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..sgatlin.isoflop import run_study, winners

    ffns = [f.strip() for f in args.ffn.split(",") if f.strip()]
    budgets, scales = _floats(args.budgets), _floats(args.scales)
    rt = runtime.setup(args.device, args.dtype)
    results = run_study(args.out, budgets, ffns, scales, args.ablation_budget, args.jobs,
                        args.batch_size, args.seq_len, args.seed, args.data_dir, device=rt.device,
                        autocast=None if args.dtype == "float32" else args.dtype)
    print(winners(results))
    print(f"-> {args.out}")
    return 0

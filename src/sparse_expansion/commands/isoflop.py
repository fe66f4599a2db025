"""`sparse-expansion isoflop`: the isoflop study of sgatlin against its baselines."""

from __future__ import annotations

import argparse

FFN_CHOICES = ("mlp", "swiglu", "moe", "peer", "sgatlin")


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
                    "FLOPs. Writes results.json, table.md, isoflop.png, ablation.md, runs/.",
    )
    p.add_argument("--budgets", required=True, help="comma-separated training FLOPs, e.g. 1e11,3e11")
    p.add_argument("--ffn", default=",".join(FFN_CHOICES),
                   help="comma-separated FFN types (default: all five)")
    p.add_argument("--scales", default="0.5,1,1.5", help="comma-separated scales (default 0.5,1,1.5)")
    p.add_argument("--ablation-budget", type=float, default=None,
                   help="also train sgatlin with GELU after the gate at this budget")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="prepared tokens (default: build them)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..sgatlin.isoflop import run_study, winners

    ffns = [f.strip() for f in args.ffn.split(",") if f.strip()]
    bad = [f for f in ffns if f not in FFN_CHOICES]
    if bad or not ffns:
        raise UsageError(f"unknown --ffn {bad}; choose from {', '.join(FFN_CHOICES)}")
    budgets, scales = _floats(args.budgets), _floats(args.scales)
    if not budgets or not scales or args.jobs < 1:
        raise UsageError("need at least one budget, one scale and --jobs >= 1")
    results = run_study(args.out, budgets, ffns, scales, args.ablation_budget, args.jobs,
                        args.batch_size, args.seq_len, args.seed, args.data_dir)
    print(winners(results))
    print(f"-> {args.out}")
    return 0

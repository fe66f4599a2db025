"""`sparse-expansion demo` (what `make run` runs): dense vs pruning vs Sparse Expansion, one table."""

from __future__ import annotations

import copy
import json
import time

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the main job: prune the shipped model, print a perplexity table")
    common.add_model_arg(p)
    p.add_argument("--sparsity", default="0.5")
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt",
                   help="comma-separated list of pruning methods to compare with dense")
    p.add_argument("--experts", type=int, default=4, help="Sparse Expansion experts (0 = skip)")
    p.add_argument("--json", action="store_true", help="also print the table as one JSON line")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import calibration_windows, corpus_tokens
    from ..engine import calibrate
    from ..errors import UsageError
    from ..expand import ExpandCompressor, ExpandSettings
    from ..models import load_model
    from ..prune import PruneCompressor, parse_sparsity
    from .evaluate import evaluate_model

    sparsity = parse_sparsity(args.sparsity)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ("magnitude", "wanda", "sparsegpt")]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; use magnitude, wanda, sparsegpt")
    dense, tokenizer = load_model(args.model)
    common.check_seqlen(dense, args.seqlen)
    calib = calibration_windows(corpus_tokens(common.DEFAULT_CALIB, tokenizer), args.calib_windows,
                                args.seqlen, seed=0, name=common.DEFAULT_CALIB)
    rows = []

    def measure(name: str, model, seconds: float) -> None:
        result = evaluate_model(model, tokenizer, common.DEFAULT_EVAL, args.eval_windows, args.seqlen)
        rows.append({"method": name, "sparsity": "0" if name == "dense" else str(sparsity),
                     "perplexity": result["perplexity"], "flops_per_token": result["flops_per_token"],
                     "nonzeros": result["nonzeros"], "compress_seconds": seconds})

    print(f"model {args.model}; calibration {args.calib_windows} x {args.seqlen} tokens of "
          f"{common.DEFAULT_CALIB}; evaluation {args.eval_windows} x {args.seqlen} of {common.DEFAULT_EVAL}")
    measure("dense", dense, 0.0)
    runs = [(method, PruneCompressor(method, sparsity)) for method in methods]
    if args.experts > 0:
        settings = ExpandSettings(experts=args.experts, sparsity=sparsity)
        runs.append((f"sparse expansion x{args.experts}", ExpandCompressor(settings)))
    for name, compressor in runs:
        print(f"-- {name} at {sparsity}")
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        calibrate(model, calib, compressor)
        measure(name, model, time.perf_counter() - start)
        del model

    print()
    print(f"{'method':<22}{'sparsity':>9}{'perplexity':>12}{'MFLOPs/tok':>12}{'seconds':>9}")
    for row in rows:
        print(f"{row['method']:<22}{row['sparsity']:>9}{row['perplexity']:>12.2f}"
              f"{row['flops_per_token'] / 1e6:>12.1f}{row['compress_seconds']:>9.1f}")
    if args.json:
        print(json.dumps(rows))
    return 0

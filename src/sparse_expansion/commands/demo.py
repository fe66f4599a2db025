"""`sparse-expansion demo` (what `make run` runs): dense vs pruning vs Sparse Expansion, one table."""

from __future__ import annotations

import copy
import json
import time

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    from ..methods import PRUNING_METHODS

    every = ",".join(PRUNING_METHODS)
    p = subparsers.add_parser("demo", help="the main job: prune and expand the shipped model, print a perplexity table",
                              description="Compress one model with every pruning method and with Sparse "
                                          "Expansion at one sparsity, evaluate each on held-out text and print "
                                          "one table (nothing is saved).")
    common.add_model_arg(p)
    p.add_argument("--sparsity", default="0.5", help="fraction of zeros or N:M (default 0.5)")
    p.add_argument("--calib-windows", type=int, default=16, help="calibration windows (default 16)")
    p.add_argument("--eval-windows", type=int, default=8, help="evaluation windows (default 8)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--methods", default=every,
                   help=f"comma-separated pruning methods to compare with dense (default {every})")
    p.add_argument("--experts", type=int, default=4, help="Sparse Expansion experts (default 4; 0 = skip)")
    p.add_argument("--json", action="store_true", help="also print the table as one JSON line")
    runtime.add_runtime_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import CalibrationSpec, check_corpus, check_seqlen_value
    from ..evaluate import evaluate_model
    from ..methods import PRUNING_METHODS, compress, make_config
    from ..models import load_causal_lm
    from ..prune import parse_sparsity

    sparsity = parse_sparsity(args.sparsity)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in PRUNING_METHODS]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; use {', '.join(PRUNING_METHODS)}")
    if args.experts < 0:
        raise UsageError(f"--experts must be 0 (skip) or positive (got {args.experts})")
    common.require_positive(args.eval_windows, "--eval-windows")
    calibration = CalibrationSpec(common.DEFAULT_CALIB, args.calib_windows, args.seqlen, seed=0)
    calibration.check()
    check_seqlen_value(args.seqlen)
    check_corpus(common.DEFAULT_EVAL)

    rt = runtime.setup(args.device, args.dtype)
    dense, tokenizer = load_causal_lm(args.model, dtype=rt.dtype)
    calib = calibration.sample(tokenizer, dense)
    rows = []

    def measure(name: str, model, seconds: float) -> None:
        result = evaluate_model(model, tokenizer, common.DEFAULT_EVAL, args.eval_windows, args.seqlen,
                                device=rt.device)
        model.to("cpu")
        rows.append({"method": name, "sparsity": "0" if name == "dense" else str(sparsity),
                     "perplexity": result["perplexity"], "flops_per_token": result["flops_per_token"],
                     "nonzeros": result["nonzeros"], "compress_seconds": seconds})

    print(f"model {args.model}; calibration {args.calib_windows} x {args.seqlen} tokens of "
          f"{common.DEFAULT_CALIB}; evaluation {args.eval_windows} x {args.seqlen} of {common.DEFAULT_EVAL}")
    measure("dense", dense, 0.0)
    runs = [(method, make_config(method, sparsity)) for method in methods]
    if args.experts > 0:
        runs.append((f"sparse expansion x{args.experts}", make_config("sparse_expansion", sparsity,
                                                                       experts=args.experts)))
    for name, config in runs:
        print(f"-- {name} at {sparsity}")
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        compress(model, calib, config, device=rt.device)
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

"""`sparse-expansion eval`: perplexity on non-overlapping windows, plus FLOPs and non-zeros."""

from __future__ import annotations

import json
import sys

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity, FLOPs per token and non-zeros of a model",
                              epilog="example: sparse-expansion eval runs/sg50 --data shakespeare:test --json")
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--data", default=common.DEFAULT_EVAL, help=f"corpus (default {common.DEFAULT_EVAL})")
    p.add_argument("--windows", type=int, default=16,
                   help="non-overlapping windows spread over the text (default 16; 0 = all)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout (the summary line goes to stderr)")

    common.add_weights_arg(p)
    runtime.add_runtime_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import check_corpus, check_seqlen_value
    from ..evaluate import evaluate_model
    from ..models import load_causal_lm
    from ..storage import weights_in_memory

    common.require_positive(args.batch_size, "--batch-size")
    if args.windows < 0:
        raise UsageError(f"--windows must be 0 (all) or positive (got {args.windows})")
    check_seqlen_value(args.seqlen)
    check_corpus(args.data)
    rt = runtime.setup(args.device, args.dtype)
    model, tokenizer = load_causal_lm(args.model, rt.device, rt.dtype, weights=args.weights)
    result = {"model": args.model, "dtype": args.dtype, "device": rt.device, "weights": weights_in_memory(model),
              **evaluate_model(model, tokenizer, args.data, args.windows, args.seqlen, batch_size=args.batch_size,
                               device=rt.device)}
    summary = (f"{args.model} on {args.data}: perplexity {result['perplexity']:.3f} over "
               f"{result['tokens']} tokens ({result['windows']} x {args.seqlen}); "
               f"{result['flops_per_token'] / 1e6:.1f} MFLOPs/token, {result['nonzeros']:,} non-zeros")
    print(summary, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
    return 0

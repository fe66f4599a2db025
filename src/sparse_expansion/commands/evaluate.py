"""`sparse-expansion eval`: perplexity on non-overlapping windows, plus FLOPs and non-zeros."""

from __future__ import annotations

import json
import time

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="perplexity, FLOPs per token and non-zeros of a model")
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--data", default=common.DEFAULT_EVAL, help=f"corpus (default {common.DEFAULT_EVAL})")
    p.add_argument("--windows", type=int, default=16,
                   help="non-overlapping windows spread over the text (default 16; 0 = all)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    common.add_device_arg(p)
    p.set_defaults(func=run)


def evaluate_model(model, tokenizer, data: str, windows: int | None, seqlen: int,
                   batch_size: int = 4, device: str = "cpu", progress: bool = True) -> dict:
    """Perplexity and costs of an already-loaded model: the library call behind `eval`."""
    from ..data import corpus_tokens, evaluation_windows
    from ..evaluate import model_costs, perplexity

    common.check_seqlen(model, seqlen)
    tokens = corpus_tokens(data, tokenizer)
    batch = evaluation_windows(tokens, seqlen, windows or None, name=data)
    start = time.perf_counter()
    result = perplexity(model.to(device), batch, batch_size=batch_size, device=device, progress=progress)
    return {"perplexity": result["perplexity"], "windows": batch.shape[0], "seqlen": seqlen,
            "tokens": result["tokens"], "data": data, **model_costs(model),
            "eval_seconds": time.perf_counter() - start}


def run(args) -> int:
    from ..models import load_model

    common.require_positive(args.batch_size, "--batch-size")
    if args.windows < 0:
        from ..errors import UsageError
        raise UsageError(f"--windows must be 0 (all) or positive (got {args.windows})")
    device = common.check_device(args.device)
    model, tokenizer = load_model(args.model)
    result = {"model": args.model, **evaluate_model(model, tokenizer, args.data, args.windows,
                                                     args.seqlen, args.batch_size, device)}
    print(f"{args.model} on {args.data}: perplexity {result['perplexity']:.3f} over "
          f"{result['tokens']} tokens ({result['windows']} x {args.seqlen}); "
          f"{result['flops_per_token'] / 1e6:.1f} MFLOPs/token, {result['nonzeros']:,} non-zeros")
    if args.json:
        print(json.dumps(result))
    return 0

"""`sparse-expansion generate`: continue a prompt with any model this library loads or writes.

Decoding runs through the library's fast C++ decode step when the model and device allow it
(decode.py says when), else through Hugging Face `generate`; `--decode hf` forces the latter.
`--json` prints one line with the text, which path ran (`decode_path`, and `fast_unavailable`: why
not the fast one) and how fast it came: prefill (the prompt's forward pass and the first token) and
decode (every later token, KV-cached), both in wall seconds and in this process's CPU seconds (all
its threads; on a shared machine the CPU time is the steadier one).
"""

from __future__ import annotations

import json
import time

from .. import runtime
from ..decode import PATHS, Unsupported, generate
from ..errors import UsageError
from ..resources import peak_rss_mb, rss_mb
from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a model or a saved folder",
                              epilog='example: sparse-expansion generate runs/se16 --prompt "To be, or not to be" '
                                     '--max-new-tokens 64 --json')
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy; above 0 samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="always generate --max-new-tokens tokens, even past end-of-text (for timing)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: text, new_tokens, prefill_seconds, decode_tokens_per_second, "
                        "peak_rss_mb and more")
    p.add_argument("--decode", default="auto", choices=PATHS,
                   help="auto (default): the fast C++ decode step where the model and device allow it, else "
                        "Hugging Face generate; fast: the step or an error; hf: always Hugging Face generate")
    common.add_weights_arg(p, fast="int8 values (on load, per row) for a pruned or expanded float folder on a "
                           "CPU with AVX-512 VNNI kernels (fastest, perplexity within 1%% of float32), else auto")
    runtime.add_runtime_args(p, auto_dtype="bfloat16 for a pruned or expanded folder on a CPU with AVX512-BF16 "
                             "kernels (fastest, perplexity within 1%% of float32), else float32")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..kernels import ops
    from ..models import load_causal_lm, resolve_model_path
    from ..storage import fast_dtype, fast_weights, weights_in_memory

    common.require_positive(args.max_new_tokens, "--max-new-tokens")
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if not args.prompt.strip():
        raise UsageError("--prompt is empty; give some text to continue")
    dtype, dtype_why = args.dtype, "asked for"
    if dtype == "auto":
        dtype, dtype_why = fast_dtype(resolve_model_path(args.model), runtime.resolve_device(args.device))
    rt = runtime.setup(args.device, dtype)
    chosen, weights_why = args.weights, "asked for"
    if chosen == "fast":
        chosen, weights_why = fast_weights(resolve_model_path(args.model), rt.device)
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, rt.device, rt.dtype, weights=chosen)
    weights = weights_in_memory(model)
    load_seconds = time.perf_counter() - start
    loaded_rss = rss_mb()
    torch.manual_seed(args.seed)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(rt.device)
    try:
        result = generate(model, ids, args.max_new_tokens, path=args.decode, pad_token_id=tokenizer.eos_token_id,
                          temperature=args.temperature, ignore_eos=args.ignore_eos)
    except Unsupported as why:
        raise UsageError(f"--decode fast cannot run here: {why}; use --decode auto or hf") from None
    text = tokenizer.decode(result.pop("new_ids"), skip_special_tokens=True)
    if not args.json:
        print(args.prompt + text)
        return 0
    kernels = weights == "compressed" or result["decode_path"] == "fast"
    info = {"model": args.model, "weights": weights, "weights_chosen": chosen, "weights_chosen_because": weights_why,
            "dtype": dtype, "dtype_chosen_because": dtype_why,
            "device": rt.device,
            "kernels": ops.backend() if kernels else None, "threads": torch.get_num_threads(),
            "load_seconds": load_seconds, "loaded_rss_mb": loaded_rss, "text": text, **result,
            "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(info))
    return 0

"""`sparse-expansion generate`: continue a prompt with any model this library loads or writes.

`--json` prints one line with the text and how fast it came: prefill (the prompt's forward pass
and the first token) and decode (every later token, KV-cached), both in wall seconds and in this
process's CPU seconds (all its threads; on a shared machine the CPU time is the steadier one).
"""

from __future__ import annotations

import json
import time

from .. import runtime
from ..errors import UsageError
from ..resources import peak_rss_mb, rss_mb
from . import common

WEIGHTS_HELP = ("how sparse weights sit in memory: auto (default: compressed with the C++ kernels on the CPU), "
                "compressed (bitmask / N:M in the sparse kernels), dense")


def add_weights_arg(parser) -> None:
    """--weights, spelled the same on eval and generate (storage.set_weights)."""
    from ..storage import WEIGHTS

    parser.add_argument("--weights", default="auto", choices=WEIGHTS, help=WEIGHTS_HELP)


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
    add_weights_arg(p)
    runtime.add_runtime_args(p)
    p.set_defaults(func=run)


class StepTimer:
    """A generate() streamer that only notes when each batch of tokens arrives: first the prompt,
    then one call per new token. Wall and process CPU time, so prefill splits from decode."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def put(self, _value) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def end(self) -> None:
        pass


def timed_generate(model, ids, max_new_tokens: int, *, pad_token_id: int | None = None, temperature: float = 0.0,
                   ignore_eos: bool = False) -> dict:
    """KV-cached generation of a [1, prompt] batch through Hugging Face `generate` (greedy, or sampled
    above temperature 0), timed: the new token ids, and prefill (the prompt's forward pass and the
    first token) apart from decode (every later token), in wall and process CPU seconds."""
    import torch

    sample = temperature > 0
    timer = StepTimer()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens if ignore_eos else None,
                             do_sample=sample, temperature=temperature if sample else None, top_p=None, top_k=None,
                             pad_token_id=pad_token_id, streamer=timer)
    wall1, cpu1 = time.perf_counter(), time.process_time()
    steps = timer.stamps[1:]  # stamps[0]: the prompt, handed over before any forward pass
    first = steps[0] if steps else (wall1, cpu1)
    decoded = max(len(steps) - 1, 0)
    decode_wall, decode_cpu = wall1 - first[0], cpu1 - first[1]
    return {"new_ids": out[0, ids.shape[1]:], "prompt_tokens": ids.shape[1], "new_tokens": out.shape[1] - ids.shape[1],
            "prefill_seconds": first[0] - wall0, "prefill_cpu_seconds": first[1] - cpu0,
            "decode_seconds": decode_wall, "decode_cpu_seconds": decode_cpu,
            "decode_tokens_per_second": decoded / decode_wall if decoded and decode_wall > 0 else None,
            "decode_tokens_per_cpu_second": decoded / decode_cpu if decoded and decode_cpu > 0 else None}


def run(args) -> int:
    import torch

    from ..kernels import ops
    from ..models import load_causal_lm
    from ..storage import weights_in_memory

    common.require_positive(args.max_new_tokens, "--max-new-tokens")
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if not args.prompt.strip():
        raise UsageError("--prompt is empty; give some text to continue")
    rt = runtime.setup(args.device, args.dtype)
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, rt.device, rt.dtype, weights=args.weights)
    weights = weights_in_memory(model)
    load_seconds = time.perf_counter() - start
    loaded_rss = rss_mb()
    torch.manual_seed(args.seed)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(rt.device)
    result = timed_generate(model, ids, args.max_new_tokens, pad_token_id=tokenizer.eos_token_id,
                            temperature=args.temperature, ignore_eos=args.ignore_eos)
    text = tokenizer.decode(result.pop("new_ids"), skip_special_tokens=True)
    if not args.json:
        print(args.prompt + text)
        return 0
    info = {"model": args.model, "weights": weights, "dtype": args.dtype, "device": rt.device,
            "kernels": ops.backend() if weights == "compressed" else None, "threads": torch.get_num_threads(),
            "load_seconds": load_seconds, "loaded_rss_mb": loaded_rss, "text": text, **result,
            "peak_rss_mb": peak_rss_mb()}
    print(json.dumps(info))
    return 0

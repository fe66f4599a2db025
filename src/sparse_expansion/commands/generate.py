"""`sparse-expansion generate`: continue a prompt with any model this library loads or writes."""

from __future__ import annotations

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a model or a saved folder",
                              epilog='example: sparse-expansion generate runs/se16 --prompt "To be, or not to be"')
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy; above 0 samples")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    runtime.add_runtime_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..models import load_causal_lm

    common.require_positive(args.max_new_tokens, "--max-new-tokens")
    if args.temperature < 0:
        raise UsageError("--temperature must be >= 0")
    if not args.prompt.strip():
        raise UsageError("--prompt is empty; give some text to continue")
    rt = runtime.setup(args.device, args.dtype)
    device = rt.device
    model, tokenizer = load_causal_lm(args.model, device, rt.dtype)
    torch.manual_seed(args.seed)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    sample = args.temperature > 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             do_sample=sample, temperature=args.temperature if sample else None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.eos_token_id)
    print(args.prompt + tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0

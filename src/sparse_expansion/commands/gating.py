"""`sparse-expansion gating`: look inside a trained sgatlin run (routing, usage, causal patching)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gating",
        help="record and analyse the router picks of a trained sgatlin run",
        description="Records (layer, channel, token) -> top-k neurons and scores, usage "
                    "statistics, the token x neuron gating matrix, nearest gating neighbours "
                    "with their text, co-activation, and a router-patching causal test. "
                    "Writes PNGs, JSON and report.md.",
    )
    p.add_argument("run_dir", help="a folder written by `sparse-expansion train --ffn sgatlin`")
    p.add_argument("--data", default="val",
                   help="'val' (held-out split), 'train', or a UTF-8 text file (default val)")
    p.add_argument("--out", required=True, help="new folder for the look")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="tokens to record, in windows of the model's sequence length "
                        "(default 16384)")
    p.add_argument("--layer", type=int, default=0,
                   help="layer for the gating-matrix and co-activation pictures (default 0)")
    p.add_argument("--channel", type=int, default=0,
                   help="channel for the gating-matrix and co-activation pictures (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for picking the causal test's prompts (default 0)")
    p.set_defaults(func=handle)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def handle(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..io import atomic_output_dir, check_output_dir
    from ..sgatlin.gating.study import check_data_choice, check_request, load_run, look_inside

    check_output_dir(args.out)
    check_data_choice(args.data)
    model, tokenizer = load_run(args.run_dir)
    check_request(model, args.max_tokens, args.layer, args.channel)
    with atomic_output_dir(args.out) as tmp:
        result = look_inside(model, tokenizer, args.run_dir, args.data, tmp, args.max_tokens,
                             args.layer, args.channel, args.seed)
    for st in result["usage"]:
        print(f"layer {st['layer']}: {st['fraction_used']:.1%} of neurons used, "
              f"entropy/logN {st['normalized_entropy']:.3f}")
    s = result["causal"]
    if s.get("known"):
        print(f"causal: {s['known']}/{s['prompts']} facts known; router patch at the subject "
              f"moves {s['fraction_moved_all_layers']:.1%} of the logit difference "
              f"(same-subject control {_pct(s['fraction_moved_control'])})")
    else:
        print(f"causal: the model knows none of the {s['prompts']} probe facts")
    if s.get("effect_prompts"):
        print(f"causal, pooled over {s['effect_prompts']} prompts the subject swap moves: "
              f"router patch moves {s['pooled_fraction_moved']:.1%} "
              f"(same-subject control {_pct(s['pooled_fraction_moved_control'])})")
    print(f"-> {args.out}/report.md")
    return 0

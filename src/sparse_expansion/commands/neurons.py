"""`sparse-expansion neurons`: Wasserstein neurons - measure entanglement, ablate, compare with an
expanded model. Writes neurons.json, PNG figures and report.md into --out."""

from __future__ import annotations

import argparse
import time

from ..errors import UsageError
from . import common

RULES = ("wd", "random", "mean", "variance", "norm")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "neurons", help="Wasserstein neurons: which neurons are entangled, do they matter, does expansion help",
        description="Collect every MLP neuron's pre-activation outputs over a corpus, measure their "
                    "Wasserstein distance to a Gaussian (WD) and mapping difficulty (MD); with --ablate, "
                    "sparsify only the top-WD neurons and compare perplexity with other choices; given a "
                    "model made by `sparse-expansion expand`, compare each neuron's WD with its experts'.")
    common.add_model_arg(p, "MODEL_OR_DIR")
    p.add_argument("--data", default=common.DEFAULT_EVAL, help=f"corpus to measure on (default {common.DEFAULT_EVAL})")
    p.add_argument("--out", required=True, help="new folder for neurons.json, PNGs and report.md")
    p.add_argument("--layers", default="all", help="'all' (default) or a list like 0,5,10-12")
    p.add_argument("--tokens", type=int, default=4096, help="token positions kept per neuron (default 4096)")
    p.add_argument("--windows", type=int, default=16,
                   help="windows of --seqlen streamed from DATA, spread over the text (default 16; 0 = all)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--pairs", type=int, default=2000, help="random token pairs for mapping difficulty (default 2000)")
    p.add_argument("--top-fraction", type=float, default=0.03,
                   help="what counts as a high-WD neuron: this top fraction of each layer (default 0.03)")
    p.add_argument("--memory-mb", type=float, default=512,
                   help="memory for kept inputs per pass; more layers than fit cost extra passes (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed for kept positions, pairs, calibration, random rows")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    a = p.add_argument_group("ablation (--ablate)")
    a.add_argument("--ablate", action="store_true", help="also run the ablation (several SparseGPT + eval runs)")
    a.add_argument("--fractions", default="0.01,0.03,0.1",
                   help="fractions of neurons per layer (default 0.01,0.03,0.1)")
    a.add_argument("--ablate-sparsity", default="0.9", help="sparsity of the chosen rows (default 0.9)")
    a.add_argument("--random-seeds", type=int, default=3, help="seeds of the random rule (default 3)")
    a.add_argument("--hessians", choices=("dense", "sequential"), default="dense",
                   help="dense: the unpruned model's Hessians, computed once (default, fast); sequential: "
                        "layer-sequential SparseGPT through the engine for every run")
    a.add_argument("--calib", default=common.DEFAULT_CALIB, help=f"calibration corpus (default {common.DEFAULT_CALIB})")
    a.add_argument("--calib-windows", type=int, default=16, help="calibration windows (default 16)")
    a.add_argument("--eval-data", default=common.DEFAULT_EVAL,
                   help=f"perplexity corpus (default {common.DEFAULT_EVAL})")
    a.add_argument("--eval-windows", type=int, default=8, help="perplexity windows (default 8)")
    p.set_defaults(func=run)


def _fractions(spec: str) -> list[float]:
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--fractions '{spec}' is not a comma list of numbers like 0.01,0.03,0.1") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise UsageError(f"--fractions must lie in (0, 1] (got '{spec}')")
    return values


def _expanded_pair(name: str, model, tokenizer):
    """(dense source model, expanded model) when `name` is an expanded folder; (model, None) otherwise."""
    from ..artifact import read_record
    from ..models import load_causal_lm
    from ..neurons.untangle import is_expanded

    if not any(is_expanded(m) for m in model.modules()):
        return model, None, None
    source = read_record(name).get("source_model")
    if not source:
        raise UsageError(f"{name}/sparse_expansion.json names no source_model; cannot find the dense weights")
    dense, _ = load_causal_lm(source)
    return dense, model, source


def run(args) -> int:
    from ..data import (
        calibration_windows,
        check_corpus,
        check_seqlen,
        check_seqlen_value,
        corpus_tokens,
        evaluation_windows,
        start_with_bos,
    )
    from ..io import atomic_output_dir, check_output_dir
    from ..models import load_causal_lm
    from ..neurons.collect import neuron_projections, parse_layers
    from ..neurons.study import StudySettings, run_study
    from ..prune import parse_sparsity

    if args.windows < 0:
        raise UsageError(f"--windows must be 0 (all) or positive (got {args.windows})")
    for value, flag in ((args.tokens, "--tokens"), (args.pairs, "--pairs"),
                        (args.batch_size, "--batch-size"), (args.random_seeds, "--random-seeds"),
                        (args.calib_windows, "--calib-windows"), (args.eval_windows, "--eval-windows")):
        common.require_positive(value, flag)
    if not 0 < args.top_fraction <= 1:
        raise UsageError(f"--top-fraction must lie in (0, 1] (got {args.top_fraction})")
    if args.memory_mb <= 0:
        raise UsageError(f"--memory-mb must be positive (got {args.memory_mb})")
    fractions = _fractions(args.fractions) if args.ablate else []
    sparsity = parse_sparsity(args.ablate_sparsity) if args.ablate else None
    check_output_dir(args.out)
    check_seqlen_value(args.seqlen)
    for corpus in (args.data, *((args.calib, args.eval_data) if args.ablate else ())):
        check_corpus(corpus)

    start = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model)
    dense, expanded, source = _expanded_pair(args.model, model, tokenizer)
    check_seqlen(dense, args.seqlen)
    from ..arch import decoder_layers

    layers = parse_layers(args.layers, len(decoder_layers(dense)))
    windows = start_with_bos(evaluation_windows(corpus_tokens(args.data, tokenizer), args.seqlen,
                                                args.windows or None, name=args.data), tokenizer)
    if min(args.tokens, windows.numel()) < 4:
        raise UsageError("--tokens must be at least 4 (two pairs for mapping difficulty)")
    settings = StudySettings(model=args.model, data=args.data, windows=args.windows, seqlen=args.seqlen,
                             tokens=args.tokens, pairs=args.pairs, seed=args.seed, top_fraction=args.top_fraction,
                             memory_mb=args.memory_mb, batch_size=args.batch_size, layers=layers)
    ablation = None
    if args.ablate:
        calib = start_with_bos(calibration_windows(corpus_tokens(args.calib, tokenizer), args.calib_windows,
                                                   args.seqlen, args.seed, name=args.calib), tokenizer)
        evaluation = start_with_bos(evaluation_windows(corpus_tokens(args.eval_data, tokenizer), args.seqlen,
                                                       args.eval_windows, name=args.eval_data), tokenizer)
        ablation = {"calib": calib, "eval": evaluation, "fractions": fractions, "sparsity": sparsity,
                    "random_seeds": args.random_seeds, "hessians": args.hessians,
                    "record": {"sparsity": str(sparsity), "hessians": args.hessians, "calib": args.calib,
                               "calib_windows": args.calib_windows, "eval_data": args.eval_data,
                               "eval_windows": args.eval_windows, "seqlen": args.seqlen,
                               "random_seeds": args.random_seeds, "fractions": fractions,
                               "modules": list(neuron_projections(dense)),
                               "mean_rule": "largest |mean output|"}}
    with atomic_output_dir(args.out) as tmp:
        result = run_study(dense, tokenizer, windows, settings, tmp, expanded=expanded, source_model=source,
                           ablation=ablation)
    s = result["summary"]
    print(f"{args.model}: {s['layers']} layers measured on {args.data}; median WD {s['wd_median_over_layers']:.4f}, "
          f"top {args.top_fraction:.0%} mean {s['wd_top_mean_over_layers']:.4f} "
          f"(noise floor {result['noise_floor']:.4f}) in {time.perf_counter() - start:.0f} s -> {args.out}")
    return 0

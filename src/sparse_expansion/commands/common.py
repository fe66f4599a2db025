"""Flags and steps that several commands share, written once."""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

from ..errors import UsageError

DEFAULT_CALIB = "shakespeare:train"
DEFAULT_EVAL = "shakespeare:test"


def add_model_arg(parser: argparse.ArgumentParser, what: str = "MODEL") -> None:
    parser.add_argument("model", nargs="?", default="smollm2-135m", metavar=what,
                        help="'smollm2-135m' (default, shipped), a model folder, or a hub id")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda; cuda holds one layer at a time")


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


def context_length(model) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_seqlen(model, seqlen: int) -> None:
    limit = context_length(model)
    if seqlen < 2:
        raise UsageError(f"--seqlen {seqlen} is too short; use at least 2 tokens")
    if limit is not None and seqlen > limit:
        raise UsageError(f"--seqlen {seqlen} exceeds the model's context of {limit} tokens; lower it")


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA GPU is available; use --device cpu")
    if not device.startswith(("cpu", "cuda")):
        raise UsageError(f"unknown --device '{device}'; use cpu or cuda")
    return device


def load_calibration(args, model, tokenizer):
    """The calibration windows [n, seqlen] described by the shared flags, validated."""
    from ..data import calibration_windows, corpus_tokens

    check_seqlen(model, args.seqlen)
    tokens = corpus_tokens(args.calib, tokenizer)
    return calibration_windows(tokens, args.calib_windows, args.seqlen, args.seed, name=args.calib)


def calibration_record(args) -> dict[str, Any]:
    return {"data": args.calib, "windows": args.calib_windows, "seqlen": args.seqlen,
            "seed": args.seed, "targets": args.targets}


def machine_record() -> dict[str, Any]:
    import torch

    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}


def require_positive(value: int, flag: str) -> None:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1 (got {value})")


def run_compression(args, make_compressor, fields: dict[str, Any], verb: str) -> int:
    """Load, calibrate layer by layer, save atomically: the body every compressing command shares.

    `make_compressor(model)` builds the LayerCompressor once the model is known; `fields` go into
    the run record beside the calibration settings, costs, timings and per-linear facts.
    """
    from .. import distributed
    from ..engine import calibrate
    from ..evaluate import model_costs
    from ..io import atomic_output_dir, check_output_dir
    from ..models import load_model
    from ..saving import save_model

    require_positive(args.calib_windows, "--calib-windows")
    require_positive(args.batch_size, "--batch-size")
    device = check_device(args.device)
    check_output_dir(args.out)
    distributed.init_from_env(device)  # under torchrun: ranks share the expert solves
    main_rank = distributed.is_main()

    model, tokenizer = load_model(args.model)
    compressor = make_compressor(model)
    # A data-free method (magnitude) must not read, or fail on, a calibration corpus.
    windows = load_calibration(args, model, tokenizer) if compressor.needs_calibration else None
    start = time.perf_counter()
    times = calibrate(model, windows, compressor, targets=args.targets, batch_size=args.batch_size,
                      device=device, progress=main_rank)
    elapsed = time.perf_counter() - start
    per_linear = compressor.record()
    achieved = [v for r in per_linear.values() for v in ([r["sparsity"]] if "sparsity" in r else r["expert_sparsity"])]
    record = {
        **fields,
        "mean_sparsity": sum(achieved) / len(achieved) if achieved else None,
        "source_model": args.model,
        "calibration": calibration_record(args) if compressor.needs_calibration else None,
        "linears": per_linear,
        "costs": model_costs(model.to("cpu")),
        "seconds": {"total": elapsed, "capture": times.capture, "forward": times.forward,
                    "compress": times.compress, **getattr(compressor, "times", {})},
        "machine": {**machine_record(), "ranks": distributed.rank_and_size()[1]},
    }
    if main_rank:
        with atomic_output_dir(args.out) as tmp:
            save_model(model, tokenizer, tmp, record)
        print(f"{verb} {len(per_linear)} linears in {elapsed:.1f} s -> {args.out}")
    return 0

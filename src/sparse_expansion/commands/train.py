"""`sparse-expansion train`: one language model at a fixed training-FLOP budget (sgatlin study)."""

from __future__ import annotations

import argparse

from .. import runtime
from ..sgatlin.ffn_types import FFN_TYPES, types_help
from . import common

ROUTER_CHOICES = ("product_dense", "product_key_value")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a small LM with a given FFN at a fixed FLOP budget",
        description="Train a decoder-only LM on Shakespeare + KJV. steps = budget // "
                    "(3 * forward FLOPs per token * tokens per step). Under torchrun it trains "
                    "data-parallel. FFN types: " + types_help() + ".",
    )
    p.add_argument("--ffn", required=True, choices=tuple(FFN_TYPES),
                   help="feed-forward type (listed above)")
    p.add_argument("--scale", type=float, required=True,
                   help="d = 128*s, layers = 2*s; a positive multiple of 0.5")
    p.add_argument("--budget", type=float, required=True, help="training FLOPs, e.g. 1e11")
    p.add_argument("--out", required=True, help="new folder for the run")
    p.add_argument("--activation", default=None,
                   help="sgatlin only: activation after the gate (default identity)")
    p.add_argument("--router", default=None, choices=ROUTER_CHOICES,
                   help="sgatlin only: router type (default product_dense)")
    common.add_training_arguments(p)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="peak AdamW learning rate, after a linear warm-up of min(1000, steps/10) "
                        "steps and before a square-root decay over the last 20%% (default 1e-3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's own choice)")
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between checkpoints in OUT.ckpt (default 100; 0: only at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the checkpoint in OUT.ckpt (default: start afresh)")
    p.add_argument("--save-data", default=None,
                   help="also write the tokenised data to this new folder, for --data-dir "
                        "(default: do not)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: show one)")
    runtime.add_runtime_args(p, dtype_help="precision of the forward pass (autocast; weights and optimizer "
                                           "stay float32)")
    p.set_defaults(func=handle)


def overrides_from(args: argparse.Namespace) -> dict:
    """The layer options given on the command line, refused for FFN types that lack them."""
    from ..errors import UsageError

    out = {}
    for name in ("activation", "router"):
        value = getattr(args, name, None)
        if value is not None:
            if name not in FFN_TYPES[args.ffn].options:
                owners = [t.name for t in FFN_TYPES.values() if name in t.options]
                raise UsageError(f"--{name} applies to --ffn {' or '.join(owners)} only")
            out[name] = value
    return out


def load_data(data_dir: str | None):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ..sgatlin.data import load_token_data, prepare_data

    return load_token_data(data_dir) if data_dir else prepare_data()


def handle(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    import torch

    from ..errors import UsageError
    from ..io import atomic_output_dir, check_output_dir
    from ..sgatlin.checkpoint import load_checkpoint
    from ..sgatlin.data import check_token_data, save_token_data
    from ..sgatlin.training import LMTrainConfig, check_config, check_data, train

    # Everything that can be refused is refused here, before the data is prepared.
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {args.threads})")
    if args.checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be >= 0 (got {args.checkpoint_every})")
    cfg = LMTrainConfig(ffn=args.ffn, scale=args.scale, budget=args.budget,
                      batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      seed=args.seed, ffn_overrides=overrides_from(args))
    out = check_output_dir(args.out)
    if args.save_data:
        check_output_dir(args.save_data)
    if args.data_dir:
        check_token_data(args.data_dir)
    ckpt = out.with_name(out.name + ".ckpt")
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = runtime.setup(args.device, args.dtype, distributed=True)
    rank, world = rt.rank, rt.world_size
    autocast = None if args.dtype == "float32" else rt.dtype
    check_config(cfg, world)
    resume = load_checkpoint(ckpt) if args.resume else False
    if resume:
        resume.check_config(cfg.to_dict())
    data = load_data(args.data_dir)
    check_data(cfg, data)
    if args.save_data and rank == 0:
        with atomic_output_dir(args.save_data) as saved:
            save_token_data(data, saved)
    if rank != 0:
        train(cfg, data, None, ckpt, args.checkpoint_every, resume, progress=False, device=rt.device,
              autocast=autocast)
        return 0
    with atomic_output_dir(out) as tmp:
        metrics = train(cfg, data, tmp, ckpt, args.checkpoint_every, resume,
                        progress=not args.no_progress, device=rt.device, autocast=autocast)
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{metrics['ffn']} scale {metrics['scale']:g}: {metrics['params']:,} params, "
          f"{metrics['steps']} steps, {metrics['tokens']:,} tokens, "
          f"train {metrics['train_loss']:.3f}, val {metrics['val_loss']:.3f}, "
          f"{metrics['tokens_per_second']:.0f} tok/s, {metrics['wall_seconds']:.0f} s -> {Path(out)}")
    return 0

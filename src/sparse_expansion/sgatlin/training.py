"""Train one small language model at a fixed FLOP budget; exact resume; data-parallel via torchrun.

Steps = budget // (3 · forward FLOPs per token · tokens per step) (docs/METHODS.md, sgatlin). AdamW with a
linear warm-up, a constant phase and a square-root decay over the last 20% of steps; global-norm
gradient clipping. Under `torchrun --nproc-per-node N` (set up by `distributed.py`) every rank
takes rows rank::N of the same global batch, so N processes follow the one-process trajectory up
to float summation order. The trained model is saved as every model of this library
(artifact.py, kind "sgatlin_lm"), checkpoints as `checkpoint.py` describes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..errors import UsageError
from ..resources import peak_rss_mb
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import TokenData, batch_at_step, val_windows
from .transformer import ModelConfig, Transformer, config_for_scale, count_params


@dataclass
class LMTrainConfig:
    """A run is a pure function of this config and the token data."""

    ffn: str
    scale: float
    budget: float
    batch_size: int = 8  # sequences per global step
    seq_len: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int | None = None  # None: min(1000, steps // 10)
    decay_fraction: float = 0.2
    clip_norm: float = 1.0
    seed: int = 0
    val_windows: int = 64
    ffn_overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(step: int, steps: int, peak: float, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up -> constant -> peak·(1 - √(t / decay_steps)) over the last decay_fraction."""
    decay_steps = int(round(decay_fraction * steps))
    decay_start = steps - decay_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < decay_start:
        return peak
    return peak * (1.0 - math.sqrt((step - decay_start) / max(decay_steps, 1)))


def plan(cfg: LMTrainConfig, vocab_size: int) -> tuple[ModelConfig, int, int]:
    """(model config, forward FLOPs per token, steps) for a training config."""
    try:
        mcfg = config_for_scale(cfg.ffn, cfg.scale, vocab_size, cfg.seq_len, **cfg.ffn_overrides)
        with torch.device("meta"):
            fpt = Transformer(mcfg).flops_per_token()
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    tokens_per_step = cfg.batch_size * cfg.seq_len
    steps = int(cfg.budget // (3 * fpt * tokens_per_step))
    if steps < 1:
        raise UsageError(
            f"budget {cfg.budget:.3g} buys no step: one step costs "
            f"{3 * fpt * tokens_per_step:.3g} FLOPs at scale {cfg.scale}; raise --budget"
        )
    return mcfg, fpt, steps


# FLOPs per token leave out the embeddings, so budget, scale and steps can be checked with any
# vocabulary, before the data (and its tokenizer) exist.
_ANY_VOCAB = 2


def check_config(cfg: LMTrainConfig, world: int = 1) -> int:
    """Refuse a config that cannot train, without touching data; returns the number of steps.

    Cheap (a model on the meta device): commands call it before preparing data or loading
    anything slow.
    """
    def positive(value: float, flag: str) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be a positive number (got {value})")

    positive(cfg.budget, "--budget")
    positive(cfg.scale, "--scale")
    positive(cfg.lr, "--lr")
    positive(cfg.clip_norm, "clip_norm")
    for value, flag in ((cfg.batch_size, "--batch-size"), (cfg.seq_len, "--seq-len"),
                        (cfg.val_windows, "val_windows")):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1 (got {value})")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 1:
        raise UsageError(f"warmup_steps must be at least 1 (got {cfg.warmup_steps})")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UsageError(f"weight decay must be >= 0 (got {cfg.weight_decay})")
    if not 0 <= cfg.decay_fraction <= 1:
        raise UsageError(f"decay_fraction must be in [0, 1] (got {cfg.decay_fraction})")
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by {world} processes")
    return plan(cfg, _ANY_VOCAB)[2]


def check_data(cfg: LMTrainConfig, data: TokenData) -> None:
    """Both token streams must hold at least one window of seq_len + 1 tokens (and one more)."""
    need = cfg.seq_len + 2
    for name, stream in (("training", data.train), ("validation", data.val)):
        if len(stream) < need:
            raise UsageError(f"the {name} data has {len(stream)} tokens; --seq-len {cfg.seq_len} "
                             f"needs at least {need}")


def _optimizer(model: torch.nn.Module, cfg: LMTrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices and expert tables only, not on norm scales or biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over all positions of the fixed windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size]
        logits = model(w[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


# ---------------------------------------------------------------- the loop


def train(
    cfg: LMTrainConfig,
    data: TokenData,
    out_dir: Path | None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool | Checkpoint = False,
    stop_after: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
) -> dict[str, Any] | None:
    """Train; save the model (artifact kind "sgatlin_lm", with its tokenizer) and metrics.json
    into out_dir.

    With checkpoint_dir, a full checkpoint (weights, optimizer moments, step, loss history) is
    written every `checkpoint_every` steps and at the end, and `resume` (True, or a Checkpoint
    already read and checked) continues from it exactly. `stop_after` ends the run after that many
    steps without final outputs (to test resume). Returns the metrics, or None when stopped early.
    On `device` (cpu or cuda:I, see runtime.py); `autocast` (e.g. torch.bfloat16) runs the forward
    pass in that precision while the weights and optimizer stay float32.
    """
    from ..progress import progress_bar

    rank, world = distributed.rank_and_size()
    check_config(cfg, world)
    check_data(cfg, data)
    mcfg, fpt, steps = plan(cfg, data.vocab_size)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, min(1000, steps // 10))
    if resume is True:
        if checkpoint_dir is None:
            raise UsageError("nothing to resume: no checkpoint folder given")
        resume = load_checkpoint(checkpoint_dir)
    if resume:
        resume.check_config(cfg.to_dict())
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)  # built on the CPU from the seed: same weights on any device
    opt = _optimizer(model, cfg)
    history: list[float] = []
    start_step, wall_before = 0, 0.0
    if resume:
        resume.apply(model, opt)
        start_step, history, wall_before = resume.step, list(resume.history), resume.wall_seconds
    net = model
    if world > 1:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    windows = val_windows(data.val, cfg.val_windows, cfg.seq_len).to(device)
    device_type = torch.device(device).type
    local_rows = slice(rank, cfg.batch_size, world)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    bar = progress_bar(total=steps, initial=start_step, disable=not progress or rank != 0,
               desc=f"{cfg.ffn} s={cfg.scale:g}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    train_seconds = 0.0
    end = steps if stop_after is None else min(steps, stop_after)
    model.train()
    for step in range(start_step, end):
        ts = time.perf_counter()
        batch = batch_at_step(data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed)[local_rows].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr, warmup, cfg.decay_fraction)
        with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
            logits = net(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        history.append(float(distributed.mean_over_ranks(loss.detach())))
        train_seconds += time.perf_counter() - ts
        bar.update(1)
        rate = tokens_per_step * (step + 1 - start_step) / max(train_seconds, 1e-9)
        bar.set_postfix(loss=f"{history[-1]:.3f}", tok_s=f"{rate:.0f}", refresh=False)
        done = step + 1
        if checkpoint_dir is not None and (
            (checkpoint_every and done % checkpoint_every == 0) or done == end
        ):
            if rank == 0:
                save_checkpoint(checkpoint_dir, model, opt, {
                    "step": done, "history": history, "train_config": cfg.to_dict(),
                    "wall_seconds": wall_before + time.perf_counter() - t0,
                })
            distributed.barrier()
    bar.close()
    if end < steps:
        return None
    val_loss = evaluate(model, windows)
    wall = wall_before + time.perf_counter() - t0
    tail = history[-max(1, min(20, len(history) // 10 or 1)):]
    metrics = {
        "ffn": cfg.ffn,
        "scale": cfg.scale,
        "params": count_params(model),
        "flops_per_token": fpt,
        "budget": cfg.budget,
        "train_flops": 3 * fpt * tokens_per_step * steps,
        "steps": steps,
        "tokens": tokens_per_step * steps,
        "train_loss": float(np.mean(tail)),
        "val_loss": val_loss,
        "wall_seconds": wall,
        "tokens_per_second": tokens_per_step * (steps - start_step) / max(train_seconds, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
        "world_size": world,
        "threads": torch.get_num_threads(),
        "warmup_steps": warmup,
        "model": mcfg.to_dict(),
        "train_config": cfg.to_dict(),
        "loss_history": history,
    }
    if rank == 0 and out_dir is not None:
        save_run(out_dir, model, data.tokenizer, metrics)
    return metrics


def save_run(folder: Path, model: Transformer, tokenizer: Any, metrics: dict[str, Any]) -> None:
    """The run folder: the model as an artifact (its record is the metrics without the loss
    history), tokenizer.json, and metrics.json with everything."""
    from ..artifact import save_artifact
    from ..io import write_json

    record = {"kind": "trained", "method": "train",
              **{k: v for k, v in metrics.items() if k != "loss_history"}}
    save_artifact(folder, model, tokenizer=tokenizer, record=record)
    write_json(Path(folder) / "metrics.json", metrics)

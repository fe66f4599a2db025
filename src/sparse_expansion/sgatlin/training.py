"""Train one small language model at a fixed FLOP budget; exact resume; data-parallel via torchrun.

Steps = budget // (3 · forward FLOPs per token · tokens per step) (DESIGN.md §4). AdamW with a
linear warm-up, a constant phase and a square-root decay over the last 20% of steps; global-norm
gradient clipping. Under `torchrun --nproc-per-node N` every rank takes rows rank::N of the same
global batch, so N processes follow the one-process trajectory up to float summation order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..io import read_json, write_json
from .data import TokenData, batch_at_step, val_windows
from .transformer import ModelConfig, Transformer, config_for_scale, count_params

FORMAT_VERSION = 1


@dataclass
class TrainConfig:
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


def plan(cfg: TrainConfig, vocab_size: int) -> tuple[ModelConfig, int, int]:
    """(model config, forward FLOPs per token, steps) for a training config."""
    try:
        mcfg = config_for_scale(cfg.ffn, cfg.scale, vocab_size, cfg.seq_len, **cfg.ffn_overrides)
        with torch.device("meta"):
            fpt = Transformer(mcfg).flops_per_token()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tokens_per_step = cfg.batch_size * cfg.seq_len
    steps = int(cfg.budget // (3 * fpt * tokens_per_step))
    if steps < 1:
        raise UsageError(
            f"budget {cfg.budget:.3g} buys no step: one step costs "
            f"{3 * fpt * tokens_per_step:.3g} FLOPs at scale {cfg.scale}; raise --budget"
        )
    return mcfg, fpt, steps


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _dist_info()


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices and expert tables only, not on norm scales or biases."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


# ---------------------------------------------------------------- saving / loading


def save_model(model: Transformer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "model": model.cfg.to_dict()}
    write_json(folder / "config.json", meta)


def load_model(folder: str | Path) -> Transformer:
    """Rebuild from config.json and load the safetensors weights strictly."""
    folder = Path(folder)
    meta = read_json(folder / "config.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{folder}/config.json has format {meta.get('format_version')}, "
                         f"expected {FORMAT_VERSION}")
    model = Transformer(ModelConfig.from_dict(meta["model"]))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise UsageError(f"{weights} is missing")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model


def _save_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer,
                     state: dict[str, Any]) -> None:
    tmp = folder.with_name(folder.name + ".writing")
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, tmp)
    osd = opt.state_dict()
    tensors, meta = {}, {}
    for pid, pstate in osd["state"].items():
        for key, val in pstate.items():
            tensors[f"{pid}.{key}"] = val.detach().contiguous()
    meta["param_groups"] = osd["param_groups"]
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "optimizer.json", meta)
    write_json(tmp / "state.json", state)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, folder)


def _load_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer
                     ) -> dict[str, Any]:
    loaded = load_model(folder)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = read_json(folder / "optimizer.json")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return read_json(folder / "state.json")


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
    cfg: TrainConfig,
    data: TokenData,
    out_dir: Path | None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Train; write model.safetensors, config.json, tokenizer.json, metrics.json to out_dir.

    With checkpoint_dir, a full checkpoint (weights, optimizer moments, step, loss history) is
    written every `checkpoint_every` steps, and `resume=True` continues from it exactly.
    `stop_after` ends the run after that many steps without final outputs (to test resume).
    Returns the metrics (rank 0), or None when stopped early.
    """
    from tqdm import tqdm

    rank, world = _dist_info()
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by {world} processes")
    mcfg, fpt, steps = plan(cfg, data.vocab_size)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, min(1000, steps // 10))
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    opt = _optimizer(model, cfg)
    history: list[float] = []
    start_step, wall_before = 0, 0.0
    if resume:
        if checkpoint_dir is None or not (checkpoint_dir / "state.json").is_file():
            raise UsageError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        state = _load_checkpoint(checkpoint_dir, model, opt)
        if state["train_config"] != json.loads(json.dumps(cfg.to_dict())):
            raise UsageError(f"checkpoint in {checkpoint_dir} was made with a different config")
        start_step, history, wall_before = state["step"], state["history"], state["wall_seconds"]
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    windows = val_windows(data.val, cfg.val_windows, cfg.seq_len)
    local_rows = slice(rank, cfg.batch_size, world)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    bar = tqdm(total=steps, initial=start_step, disable=not progress or rank != 0,
               desc=f"{cfg.ffn} s={cfg.scale:g}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    train_seconds = 0.0
    end = steps if stop_after is None else min(steps, stop_after)
    model.train()
    for step in range(start_step, end):
        ts = time.perf_counter()
        batch = batch_at_step(data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed)[local_rows]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg.lr, warmup, cfg.decay_fraction)
        logits = net(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        value = loss.detach()
        if world > 1:
            dist.all_reduce(value)
            value /= world
        history.append(float(value))
        train_seconds += time.perf_counter() - ts
        bar.update(1)
        rate = tokens_per_step * (step + 1 - start_step) / max(train_seconds, 1e-9)
        bar.set_postfix(loss=f"{history[-1]:.3f}", tok_s=f"{rate:.0f}", refresh=False)
        done = step + 1
        if checkpoint_dir is not None and (
            (checkpoint_every and done % checkpoint_every == 0) or done == end
        ):
            if rank == 0:
                _save_checkpoint(checkpoint_dir, model, opt, {
                    "step": done, "history": history, "train_config": cfg.to_dict(),
                    "wall_seconds": wall_before + time.perf_counter() - t0,
                })
            if world > 1:
                dist.barrier()
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
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "warmup_steps": warmup,
        "model": mcfg.to_dict(),
        "train_config": cfg.to_dict(),
        "loss_history": history,
    }
    if rank == 0 and out_dir is not None:
        save_model(model, out_dir)
        data.tokenizer.save(str(out_dir / "tokenizer.json"))
        write_json(out_dir / "metrics.json", metrics)
    return metrics

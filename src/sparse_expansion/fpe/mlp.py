"""A plain ReLU MLP whose linears carry fixed binary masks, plus the small training loop FPE uses.

The mask is applied in the forward pass (`weight * mask`), so a masked entry neither
contributes to the output nor receives a gradient: it stays exactly where the split put it
(zero) through any further training, whatever the optimizer. Saved as safetensors + JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 1


class MaskedLinear(nn.Linear):
    """nn.Linear with a fixed 0/1 mask on the weight (all ones = an ordinary dense linear)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones(out_features, in_features))

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Fix a new mask and zero the weights it removes, so stored weights agree with it."""
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight.shape)}")
        self.mask.copy_(mask.to(self.mask.dtype))
        self.weight.mul_(self.mask)


@dataclass(frozen=True)
class MLPConfig:
    """Constructor arguments, stored beside the weights so a checkpoint rebuilds itself."""

    in_features: int
    hidden: tuple[int, ...]
    out_features: int
    activation: str = "relu"  # "relu" or "identity" (the exactness test uses identity)


class MaskedMLP(nn.Module):
    """in → hidden[0] → … → hidden[-1] → out, activation between layers, every linear masked."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        if config.activation not in ("relu", "identity"):
            raise ValueError(f"unknown activation {config.activation!r}; use relu or identity")
        if not config.hidden:
            raise ValueError("an MLP for FPE needs at least one hidden layer")
        self.config = config
        sizes = (config.in_features, *config.hidden, config.out_features)
        self.layers = nn.ModuleList(MaskedLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1 and self.config.activation == "relu":
                x = F.relu(x)
        return x


def count_nonzeros(model: MaskedMLP) -> int:
    """Non-zero parameters as they act in the forward pass: masked weights plus biases."""
    total = 0
    for layer in model.layers:
        total += int((layer.effective_weight() != 0).sum())
        if layer.bias is not None:
            total += int((layer.bias != 0).sum())
    return total


@dataclass(frozen=True)
class TrainConfig:
    """Adam on minibatches; cross-entropy (one logit per class; a single logit means BCE)."""

    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def train_epochs(
    model: MaskedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    config: TrainConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """Train in place for `epochs` passes; returns the optimizer so a schedule can continue it."""
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = x.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return optimizer


@torch.no_grad()
def accuracy(model: MaskedMLP, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    logits = model(x)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)
    return float((pred == y).float().mean())


def save_mlp(model: MaskedMLP, folder: str | os.PathLike, extra: dict | None = None) -> None:
    """Weights and masks to model.safetensors, constructor arguments to config.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = model.config
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "fpe-masked-mlp",
        "in_features": cfg.in_features,
        "hidden": list(cfg.hidden),
        "out_features": cfg.out_features,
        "activation": cfg.activation,
        **(extra or {}),
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_mlp(folder: str | os.PathLike) -> MaskedMLP:
    """Rebuild from config.json, then load the tensors strictly."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("kind") != "fpe-masked-mlp" or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder} is not an FPE MLP checkpoint of format {FORMAT_VERSION}")
    config = MLPConfig(meta["in_features"], tuple(meta["hidden"]), meta["out_features"], meta["activation"])
    model = MaskedMLP(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model

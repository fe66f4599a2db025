"""A plain ReLU MLP whose linears carry fixed binary masks, plus the small training loop FPE uses.

The mask is applied in the forward pass (`weight * mask`), so a masked entry neither
contributes to the output nor receives a gradient: it stays exactly where the split put it
(zero) through any further training, whatever the optimizer. Saved and loaded like every
model of this library (artifact.py, kind "fpe_mlp"): `save_artifact(folder, mlp)`,
`models.load_model(folder)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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

    artifact_kind = "fpe_mlp"  # its name in artifact.KINDS

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

    # --- artifact: rebuilt from its spec when loading ----------------------------------------------
    def spec(self) -> dict[str, Any]:
        c = self.config
        return {"in_features": c.in_features, "hidden": list(c.hidden), "out_features": c.out_features,
                "activation": c.activation}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MaskedMLP:
        return cls(MLPConfig(int(spec["in_features"]), tuple(int(h) for h in spec["hidden"]),
                             int(spec["out_features"]), str(spec["activation"])))


def count_nonzeros(model: MaskedMLP) -> int:
    """Non-zero parameters as they act in the forward pass: masked weights plus biases."""
    total = 0
    for layer in model.layers:
        total += int((layer.effective_weight() != 0).sum())
        if layer.bias is not None:
            total += int((layer.bias != 0).sum())
    return total


@dataclass(frozen=True)
class MLPTrainConfig:
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
    config: MLPTrainConfig,
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

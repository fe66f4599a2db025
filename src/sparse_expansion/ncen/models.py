"""Ensemble members (small MLPs, or a small CNN for 8×8 digits) and the ensemble as one module.

Every member takes inputs in box coordinates u ∈ [0, 1]^D and centres them itself with the
training set's per-feature mean and ONE scalar scale (the mean per-feature std), fixed buffers.
Per-feature standardisation would divide near-constant features (digits' border pixels) by a
tiny std and make an ε-step there huge; one scalar keeps the ε-ball as isotropic for the model
as it is in the box. Attacks, gradients and ε all live in box coordinates for every method.

The ensemble predicts with the average of its members' probabilities, and `Ensemble.forward`
returns the log of that average. torchattacks applies cross-entropy to what the model returns;
log_softmax(log p̄) = log p̄ because p̄ sums to one, so a white-box attack maximises exactly the
negative log-likelihood of the ensemble's actual prediction. (Averaged logits would be a
different classifier from the one evaluated; they are attacked separately as a surrogate,
`attacks.AveragedLogits`, to catch gradient masking by saturated softmaxes.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .losses import ensemble_log_probs

ARCHS = ("mlp", "cnn")


@dataclass(frozen=True)
class MemberConfig:
    """Constructor arguments of one member."""

    in_features: int
    classes: int
    arch: str = "mlp"
    hidden: int = 64  # MLP: width of both hidden layers; CNN: channels of the second conv
    depth: int = 2  # MLP hidden layers


class Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone().clamp_min(1e-6))  # a scalar: see the module docstring

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return (u - self.mean) / self.std


class MLP(nn.Module):
    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__()
        sizes = (cfg.in_features, *([cfg.hidden] * cfg.depth), cfg.classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SmallCNN(nn.Module):
    """8×8 images: conv3×3(1→c/2) → ReLU → conv3×3(c/2→c) → ReLU → 2×2 max-pool → linear."""

    def __init__(self, cfg: MemberConfig) -> None:
        super().__init__()
        side = int(round(math.sqrt(cfg.in_features)))
        if side * side != cfg.in_features:
            raise ValueError(f"the CNN needs square images; {cfg.in_features} features is not a square")
        self.side = side
        c1 = max(1, cfg.hidden // 2)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, cfg.hidden, 3, padding=1)
        self.head = nn.Linear(cfg.hidden * (side // 2) ** 2, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(F.max_pool2d(x, 2).flatten(1))


class Member(nn.Module):
    """Standardise, then the network. Returns logits."""

    def __init__(self, cfg: MemberConfig, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.config = cfg
        self.standardize = Standardize(mean, std)
        if cfg.arch == "mlp":
            self.net = MLP(cfg)
        elif cfg.arch == "cnn":
            self.net = SmallCNN(cfg)
        else:
            raise ValueError(f"unknown arch {cfg.arch!r}; use one of {', '.join(ARCHS)}")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(u))


class Ensemble(nn.Module):
    """Members averaged in probability; forward returns log p̄ (see the module docstring)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, u: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(u) for m in self.members])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return ensemble_log_probs(self.member_logits(u))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (the standardisation buffers are not parameters)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_width(cfg: MemberConfig, total: int) -> int:
    """The hidden width whose single network has the parameter count closest to `total`
    (counts grow with the width, so walk up until they pass it)."""
    zeros, ones = torch.zeros(cfg.in_features), torch.ones(cfg.in_features)
    best, best_gap, h = 1, None, 1
    while True:
        n = count_parameters(Member(MemberConfig(cfg.in_features, cfg.classes, cfg.arch, h, cfg.depth), zeros, ones))
        if best_gap is None or abs(n - total) < best_gap:
            best, best_gap = h, abs(n - total)
        if n > total:
            return best
        h += 1

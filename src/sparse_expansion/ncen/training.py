"""Train an ensemble (or the single wide baseline) with a method from the registry.

All members are trained jointly by one Adam optimiser on the same minibatches; the seed fixes
the members' initialisations and the batch order. With a loss that is a sum of per-member
terms ("independent"), joint training is exactly independent training: Adam's updates are per
parameter and no parameter is shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data import Dataset
from .methods import EnsembleMethod, Terms
from .models import Ensemble, Member, MemberConfig, count_parameters, matched_width


@dataclass(frozen=True)
class EnsembleTrainConfig:
    members: int = 3
    arch: str = "mlp"
    hidden: int = 64
    depth: int = 2
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 64


def default_train_config(dataset: str) -> EnsembleTrainConfig:
    """Per data set: the 384-d embeddings (2,400 training lines) overfit fast, so fewer epochs at
    a lower learning rate, with a little weight decay."""
    if dataset == "plays":
        return EnsembleTrainConfig(epochs=20, lr=1e-3, weight_decay=1e-4)
    return EnsembleTrainConfig()


def member_grads(members, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (M, N, C), input gradients of each member's own CE (M, N, D)).

    Each member reads its own copy of the batch, so one backward pass gives every member's
    per-example gradient; with `create_graph` the gradients can be trained on (double backprop)."""
    m = len(members)
    xs = x.detach().unsqueeze(0).repeat(m, *([1] * x.dim())).requires_grad_(True)
    logits = torch.stack([member(xs[i]) for i, member in enumerate(members)])
    n, c = logits.shape[1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(m * n, c), y.repeat(m), reduction="sum")
    (grads,) = torch.autograd.grad(ce, xs, create_graph=create_graph)
    return logits, grads


def build_members(method: EnsembleMethod, data: Dataset, cfg: EnsembleTrainConfig) -> tuple[list[Member], MemberConfig]:
    """The members (one wide network for a `single` method), initialised from the current RNG."""
    mcfg = MemberConfig(data.features, len(data.classes), cfg.arch, cfg.hidden, cfg.depth)
    mean, std = data.x_train.mean(dim=0), data.x_train.std(dim=0).mean()
    if method.single:
        total = cfg.members * count_parameters(Member(mcfg, mean, std))
        mcfg = MemberConfig(mcfg.in_features, mcfg.classes, mcfg.arch, matched_width(mcfg, total), mcfg.depth)
        return [Member(mcfg, mean, std)], mcfg
    return [Member(mcfg, mean, std) for _ in range(cfg.members)], mcfg


def train_ensemble(method: EnsembleMethod, weights, data: Dataset, cfg: EnsembleTrainConfig,
                   seed: int) -> tuple[Ensemble, dict]:
    """Train from scratch; returns the ensemble (eval mode) and a record of the training."""
    method.check(weights)
    torch.manual_seed(seed)
    members, mcfg = build_members(method, data, cfg)
    ensemble = Ensemble(members)
    params = [p for p in ensemble.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    ensemble.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            if method.needs_grads:
                logits, grads = member_grads(ensemble.members, x, y, create_graph=True)
            else:
                logits, grads = ensemble.member_logits(x), None
            loss, parts = method.loss(Terms(logits, y, grads), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
        last = {k: v / batches for k, v in sums.items()}
    ensemble.eval()
    record = {
        "train_seconds": time.perf_counter() - t0,
        "members": len(members),
        "member_config": {"arch": mcfg.arch, "hidden": mcfg.hidden, "depth": mcfg.depth},
        "parameters": count_parameters(ensemble),
        "last_epoch_terms": last,
    }
    return ensemble, record

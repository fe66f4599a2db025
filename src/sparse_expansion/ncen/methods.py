"""The registry of training methods: one entry per method, read by training, the CLI and the report.

Adding a method is one `EnsembleMethod` entry here: a frozen dataclass of its own weights (each field
becomes a `--<method>-<field>` flag) and a loss on `Terms`.

Cross-entropy: every ensemble method trains each member on its own cross-entropy and averages
over members (`ce_members`). NCEn can instead use the cross-entropy of the ensemble's averaged
prediction (`--ncen-ce ensemble`); we could not read which one the paper uses (only its abstract
was reachable), and chose per-member CE as the default because transfer between members is only
meaningful when each member is a classifier in its own right, and because ADP and GAL, the
baselines, both train members on their own CE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from . import losses


@dataclass
class Terms:
    """What one minibatch gives a loss: members' logits (M, N, C), labels (N,) and, for methods
    that need them, the input gradients of each member's own CE (M, N, D), graph kept."""

    logits: torch.Tensor
    y: torch.Tensor
    grads: torch.Tensor | None = None

    def ce_members(self) -> torch.Tensor:
        m, n, c = self.logits.shape
        return F.cross_entropy(self.logits.reshape(m * n, c), self.y.repeat(m))

    def ce_ensemble(self) -> torch.Tensor:
        return F.nll_loss(losses.ensemble_log_probs(self.logits), self.y)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.logits, dim=-1)


@dataclass(frozen=True)
class NoWeights:
    """This method has no weights of its own."""


@dataclass(frozen=True)
class NCEnConfig:
    direction: float = 0.5  # λ_dir on the mean pairwise cosine of input gradients
    magnitude: float = 0.5  # λ_mag on the mean pairwise correlation of gradient norms
    ce: str = "members"  # "members" (each member's CE, averaged) or "ensemble" (CE of p̄)


@dataclass(frozen=True)
class ADPConfig:
    alpha: float = 2.0  # weight of the ensemble entropy (Pang et al. 2019 use 2)
    beta: float = 0.5  # weight of the log-determinant (Pang et al. 2019 use 0.5)
    offset: float = 1e-6  # added to the Gram matrix's diagonal inside log det


@dataclass(frozen=True)
class GALConfig:
    weight: float = 0.5  # λ on log Σ exp(cos) (Kariyappa & Qureshi 2019 use 0.5)


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def _ce_only(t: Terms, _cfg) -> tuple[torch.Tensor, dict]:
    ce = t.ce_members()
    return ce, {"ce": _f(ce)}


def _ncen(t: Terms, cfg: NCEnConfig) -> tuple[torch.Tensor, dict]:
    ce = t.ce_ensemble() if cfg.ce == "ensemble" else t.ce_members()
    direction = losses.mean_pairwise_cosine(t.grads)
    magnitude = losses.norm_correlation(t.grads)
    total = ce + cfg.direction * direction + cfg.magnitude * magnitude
    return total, {"ce": _f(ce), "direction": _f(direction), "magnitude": _f(magnitude)}


def _adp(t: Terms, cfg: ADPConfig) -> tuple[torch.Tensor, dict]:
    ce = t.ce_members()
    probs = t.probs()
    entropy = losses.ensemble_entropy(probs)
    log_det = losses.log_det_diversity(probs, t.y, cfg.offset)
    total = ce - cfg.alpha * entropy - cfg.beta * log_det
    return total, {"ce": _f(ce), "entropy": _f(entropy), "log_det": _f(log_det)}


def _gal(t: Terms, cfg: GALConfig) -> tuple[torch.Tensor, dict]:
    ce = t.ce_members()
    gal = losses.gal_term(t.grads)
    return ce + cfg.weight * gal, {"ce": _f(ce), "gal": _f(gal)}


@dataclass(frozen=True)
class EnsembleMethod:
    name: str
    description: str
    config: type
    loss: Callable[[Terms, object], tuple[torch.Tensor, dict]]
    needs_grads: bool = False
    single: bool = False  # one network with the ensemble's total parameter count

    def check(self, cfg) -> None:
        if isinstance(cfg, NCEnConfig) and cfg.ce not in ("members", "ensemble"):
            raise ValueError(f"NCEn's ce must be 'members' or 'ensemble', got {cfg.ce!r}")


METHODS: dict[str, EnsembleMethod] = {
    m.name: m
    for m in (
        EnsembleMethod("ncen", "NCEn: CE + λ_dir·mean pairwise gradient cosine + λ_mag·gradient-norm correlation",
               NCEnConfig, _ncen, needs_grads=True),
        EnsembleMethod("independent", "members trained on their own CE only (different inits), probabilities averaged",
               NoWeights, _ce_only),
        EnsembleMethod("single", "one network with the ensemble's total parameter count", NoWeights, _ce_only,
               single=True),
        EnsembleMethod("adp", "ADP (Pang et al. 2019): CE - α·ensemble entropy - β·log det of non-maximal predictions",
               ADPConfig, _adp),
        EnsembleMethod("gal", "GAL (Kariyappa & Qureshi 2019): CE + λ·log Σ_{i<j} exp(cos of input gradients)",
               GALConfig, _gal, needs_grads=True),
    )
}


def weight_fields(method: EnsembleMethod) -> list:
    return list(fields(method.config))

"""Pure tensor functions for the diversity terms of NCEn, ADP and GAL.

Every function takes per-member tensors stacked on dim 0 (M members) and returns a scalar, so
tests can pin them on hand-built tensors. Gradients are input gradients of each member's own
cross-entropy, one row per example: `grads` has shape (M, N, D).

NCEn (Luo, Zhang, Kong, Chen, Tang, arXiv 2206.10334). Only the paper's abstract was reachable
from here, so the exact published formulas could not be checked; what follows is our reading of
"gradient directions and gradient magnitudes of each member negatively correlated", written in
the spirit of negative correlation learning (Liu & Yao 1999):
- direction term: the mean over member pairs (i < j) and examples of cos(g_i(x), g_j(x)).
  Applying NCL's penalty (f_i - f̄)·Σ_{j≠i}(f_j - f̄) to unit gradient directions gives, up to an
  affine map, exactly this mean pairwise cosine; minimising it drives the directions apart
  (its floor is -1/(M-1), members' unit gradients summing to zero);
- magnitude term: the mean over pairs of the Pearson correlation, across the examples of a batch,
  between ‖g_i(x)‖ and ‖g_j(x)‖. Minimising it makes members steep where the others are flat.
  Pearson correlation is bounded and scale-free, so the term cannot be won by inflating or
  shrinking every gradient (the raw NCL penalty on norms is unbounded below).
The training loss is CE + λ_dir · direction + λ_mag · magnitude (`methods.NCEnConfig`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-12


def pair_indices(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) with i < j among m members."""
    i, j = torch.triu_indices(m, m, offset=1)
    return i, j


def pairwise_cosines(grads: torch.Tensor) -> torch.Tensor:
    """(P, N): cosine of every member pair's gradients, per example (0 where a gradient is zero)."""
    flat = grads.flatten(2)
    unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(EPS)
    i, j = pair_indices(grads.shape[0])
    return (unit[i] * unit[j]).sum(dim=2)


def mean_pairwise_cosine(grads: torch.Tensor) -> torch.Tensor:
    """NCEn's direction term (and the `gradient_cosine` metric): mean over pairs and examples."""
    return pairwise_cosines(grads).mean()


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors (0 when either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(EPS)


def norm_correlation(grads: torch.Tensor) -> torch.Tensor:
    """NCEn's magnitude term: mean over member pairs of the across-batch Pearson correlation of
    the gradient norms ‖g_i(x)‖, ‖g_j(x)‖."""
    norms = grads.flatten(2).norm(dim=2)  # (M, N)
    i, j = pair_indices(grads.shape[0])
    return torch.stack([pearson(norms[a], norms[b]) for a, b in zip(i.tolist(), j.tolist())]).mean()


def gal_term(grads: torch.Tensor) -> torch.Tensor:
    """GAL (Kariyappa & Qureshi 2019): log Σ_{i<j} exp(cos(g_i, g_j)), per example, batch mean.

    A smooth maximum over pairs: it punishes the most aligned pair most. Its floor is
    log(P) - 1 (all pairs anti-aligned), P = M(M-1)/2."""
    return torch.logsumexp(pairwise_cosines(grads), dim=0).mean()


def first_order_transfer(grads: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over member pairs (both directions) and examples of sign(g_a)·g_b / ‖g_b‖₁.

    δ_a = ε·sign(g_a) is the L∞-optimal first-order perturbation against member a; the ratio is how
    far it moves member b's loss relative to b's own optimal δ_b (1: as far, 0: not at all,
    < 0: the other way), independent of ε to first order. `pairs` (P, 2) defaults to all i < j."""
    if pairs is None:
        pairs = torch.stack(pair_indices(grads.shape[0]), dim=1)
    a, b = grads[pairs[:, 0]].flatten(2), grads[pairs[:, 1]].flatten(2)

    def ratio(src, dst):
        return (torch.sign(src) * dst).sum(-1) / dst.abs().sum(-1).clamp_min(EPS)

    return (0.5 * (ratio(a, b) + ratio(b, a))).mean()


def ensemble_entropy(probs: torch.Tensor) -> torch.Tensor:
    """ADP's H(mean_i p_i): Shannon entropy (nats) of the averaged prediction, batch mean. probs: (M, N, C)."""
    mean = probs.mean(dim=0)
    return -(mean * mean.clamp_min(EPS).log()).sum(dim=1).mean()


def non_maximal(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(M, N, C-1): each member's prediction with the true class removed, L2-normalised (ADP)."""
    m, n, c = probs.shape
    keep = torch.ones(n, c, dtype=torch.bool, device=probs.device)
    keep[torch.arange(n), y] = False
    rest = probs[:, keep].reshape(m, n, c - 1)
    return rest / rest.norm(dim=2, keepdim=True).clamp_min(EPS)


def log_det_diversity(probs: torch.Tensor, y: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    """ADP's log ED = log det(M̃ᵀM̃ + offset·I), M̃ the members' non-maximal predictions as columns;
    batch mean. ED is the squared volume spanned by the members' normalised non-maximal
    predictions: 1 when they are orthogonal, 0 when two coincide (the offset keeps the log finite)."""
    tilde = non_maximal(probs, y).permute(1, 0, 2)  # (N, M, C-1)
    gram = tilde @ tilde.transpose(1, 2)  # (N, M, M)
    eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    return torch.logdet(gram + offset * eye).mean()


def adp_term(probs: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, offset: float = 1e-6) -> torch.Tensor:
    """ADP regulariser (Pang et al. 2019), to be added to the members' CE: -α·H - β·log ED."""
    return -alpha * ensemble_entropy(probs) - beta * log_det_diversity(probs, y, offset)


def ensemble_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log of the members' averaged probabilities: logsumexp_i log_softmax(z_i) - log M. logits: (M, N, C)."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])

"""Asymmetric calibration: solve a linear against the dense model's outputs, not its compressed inputs' own.

SparseGPT and GPTQ minimise |W X~ - W' X~|^2 over the inputs X~ the compressed model feeds the linear: the
solve reproduces what the earlier (pruned, quantized) layers left, errors included. With X the dense
model's inputs for the same tokens, |W X - W' X~|^2 splits into a part no W' can change plus
|(W_t - W') X~|^2, where W_t = W C H^-1 (C = X X~^T, H = X~ X~^T) is the least-squares weight that maps the
compressed inputs onto the dense outputs. So the usual solve, given W_t instead of W, also works off the
upstream errors. GPTAQ (Li et al., ICML 2025) minimises the same objective inside GPTQ's column loop;
solving for W_t first keeps SparseGPT's solve as it is.
"""

from __future__ import annotations

import torch


def asymmetric_target(weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor,
                      percdamp: float = 0.01) -> torch.Tensor:
    """W_t = W + W (C - H) (H + damp I)^-1 for W [out, in], H = 2/n X~ X~^T and C = 2/n X X~^T [in, in], in W's
    dtype (Sparse Expansion's experts share one: expand/compressor.py).

    Equal to W C H^-1 without damping; written as a correction so that where the two streams agree
    (C = H, e.g. the first layer) W comes back exactly, and the damping (the solve's own rule: `percdamp`
    of the mean diagonal) only tempers the correction. One Cholesky solve in float32, as SparseGPT's own."""
    h = hessian.float()
    damped = h + percdamp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    factor = torch.linalg.cholesky(damped)  # a Gram matrix plus a positive diagonal
    w = weight.float()
    moved = w @ (cross.float() - h)  # [out, in]; exactly 0 where the streams agree
    correction = torch.cholesky_solve(moved.t(), factor).t()  # M H^-1, H symmetric
    return (w + correction).to(weight.dtype)

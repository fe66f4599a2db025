"""SparseGPT (Frantar & Alistarh 2023) as a pure function of a weight and a Hessian.

Batched over leading dimensions, so Sparse Expansion solves all k experts of a linear at once
(each with its own cluster Hessian) with the very same code path as plain SparseGPT.
"""

from __future__ import annotations

import torch

from ..threads import one_thread
from .quantize import GroupQuantizer
from .sparsity import Sparsity, mask_counts, mask_lowest


def upper_cholesky_of_inverse(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U upper-triangular with H^-1 = U^T U, without forming H^-1; returns (U, info) like cholesky_ex.

    With P the index reversal, if P H P = L L^T then U = P L^-1 P. One Cholesky and one triangular
    inverse instead of Cholesky, cholesky_inverse and a second Cholesky, which is slower
    (`benchmarks/design/design_choices.py`, key inverse_factor).
    """
    return _upper_cholesky_of_inverse(hessian.flip(-1, -2))


def _upper_cholesky_of_inverse(flipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """upper_cholesky_of_inverse of H given P H P (`flipped`, which the caller may have damped)."""
    lower, info = torch.linalg.cholesky_ex(flipped)
    return lower_triangular_inverse(lower).flip(-1, -2), info


def lower_triangular_inverse(lower: torch.Tensor, leaf: int = 192) -> torch.Tensor:
    """L^-1 by halves: [[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]].

    A triangular solve against the identity does the full n^3 work; the halves put most of the
    n^3/3 into matmuls (`benchmarks/design/design_choices.py`, keys triangular_inverse_1 and _16).
    The halves are written into one output (no [.., n, n] buffer per level: at 16 x 1536^2 those
    allocations cost a third of the inverse).
    """
    out = torch.empty_like(lower)
    _triangular_inverse_into(lower, out, leaf)
    return out


def _triangular_inverse_into(lower: torch.Tensor, out: torch.Tensor, leaf: int) -> None:
    n = lower.shape[-1]
    if n <= leaf:
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device).expand_as(lower)
        out.copy_(torch.linalg.solve_triangular(lower, eye, upper=False))
        return
    h = n // 2
    _triangular_inverse_into(lower[..., :h, :h], out[..., :h, :h], leaf)
    _triangular_inverse_into(lower[..., h:, h:], out[..., h:, h:], leaf)
    out[..., :h, h:] = 0.0
    out[..., h:, :h] = -out[..., h:, h:] @ (lower[..., h:, :h] @ out[..., :h, :h])


def inverse_hessian_factor(
    hessian: torch.Tensor, percdamp: float = 0.01, max_tries: int = 8
) -> tuple[torch.Tensor, list[float]]:
    """Upper Cholesky factor of (H + damp*I)^-1 per batch element; damping grows x10 on failure.

    Returns the factor and the relative damping each batch element ended up with.
    """
    batch_shape = hessian.shape[:-2]
    hessian = hessian.reshape(-1, *hessian.shape[-2:])
    n, batch = hessian.shape[-1], hessian.shape[0]
    mean_diag = torch.diagonal(hessian, dim1=-2, dim2=-1).mean(-1)
    damp = torch.full((batch,), percdamp, dtype=hessian.dtype, device=hessian.device)
    factor: torch.Tensor | None = None
    todo = torch.arange(batch, device=hessian.device)
    for _ in range(max_tries):
        # The flip is a copy: damp that (the same diagonal, reversed), not a clone of the input as well.
        damped = (hessian if factor is None else hessian[todo]).flip(-1, -2)
        damped.diagonal(dim1=-2, dim2=-1).add_((damp[todo] * mean_diag[todo]).unsqueeze(-1))
        upper, info = _upper_cholesky_of_inverse(damped)
        del damped
        good = (info == 0) & torch.isfinite(upper.sum(dim=(-2, -1)))  # any inf/nan makes the sum non-finite
        if factor is None:
            factor = upper  # first try covers every element; failed ones are overwritten below
        else:
            factor[todo[good]] = upper[good]
        failed = todo[~good]
        if failed.numel() == 0:
            return factor.reshape(*batch_shape, n, n), damp.tolist()
        damp[failed] *= 10
        todo = failed
    raise RuntimeError(
        f"Hessian is not positive definite even with damping {damp.max().item():g}; "
        "the calibration inputs are degenerate (use more calibration windows)"
    )


def sparsegpt_solve(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: Sparsity,
    *,
    bits: int | None = None,
    group_size: int | None = None,
    grid: str = "minmax",
    blocksize: int = 128,
    percdamp: float = 0.01,
    zeros: torch.Tensor | None = None,
    zeros_per_row: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Prune (and optionally quantize) `weight` [..., out, in] given H = 2/n sum x x^T [..., in, in].

    Columns are processed left to right in blocks; in each block the mask keeps the weights with
    the largest w^2 / [H^-1]_ii^2, and every pruned or rounded weight's error is pushed onto the
    not-yet-processed columns (the OBS update), so the layer output changes as little as possible.
    Returns the new weight (same dtype) and {'damping': [...], 'error': [...]} per batch element,
    plus, with `bits`, 'grid': (scale, zero) [..., out, groups] float32, the grid every kept weight
    lies on (per row, or per row and `group_size` columns, which must divide `blocksize`), each one
    placed by `grid` ("minmax" or "mse": formats.fit_grid).

    `zeros` (from `allocation.block_counts`) replaces the fraction by exact counts: [..., blocks]
    zeros per block, chosen over the whole block as usual, or with `zeros_per_row` [..., out, blocks]
    zeros per row and block (a quota for every row); leading dims broadcast. Unstructured only.
    """
    dtype = weight.dtype
    W = weight.detach().clone().float()
    H = hessian.detach().float()  # copied below only if an input never fired (it is read, not written, after)
    if W.dim() == 2:
        W, H, squeeze = W.unsqueeze(0), H.unsqueeze(0), True
    else:
        squeeze = False

    # Inputs that never fire carry no information: make H invertible there and drop the weight.
    dead = torch.diagonal(H, dim1=-2, dim2=-1) == 0
    if bool(dead.any()):
        H = H.clone()
        torch.diagonal(H, dim1=-2, dim2=-1)[dead] = 1.0
    W.masked_fill_(dead.unsqueeze(-2), 0.0)

    if group_size is not None and (group_size < 1 or blocksize % group_size):
        raise ValueError(f"group size {group_size} must divide the block size {blocksize}")
    Hinv, damping = inverse_hessian_factor(H, percdamp)
    quantizer = GroupQuantizer(W, bits, group_size, grid) if bits else None
    errors = torch.zeros(W.shape[0], dtype=torch.float32, device=W.device)

    if zeros is not None:
        if sparsity.structured:
            raise ValueError("exact zero counts are for unstructured sparsity")
        shape = (*W.shape[:-1], zeros.shape[-1]) if zeros_per_row else (W.shape[0], zeros.shape[-1])
        zeros = (zeros.expand(shape), zeros_per_row)
    _solve_blocks(W, Hinv, sparsity, quantizer, errors, blocksize, zeros=zeros)

    info = {"damping": damping, "error": errors.tolist()}
    if quantizer is not None:
        scale, zero = quantizer.scale, quantizer.zero
        info["grid"] = (scale.squeeze(0), zero.squeeze(0)) if squeeze else (scale, zero)
    if squeeze:
        W = W.squeeze(0)
    if not torch.isfinite(W).all():
        raise RuntimeError("SparseGPT produced non-finite weights; check the calibration data")
    return W.to(dtype), info


def _solve_blocks(W, Hinv, sparsity: Sparsity, quantizer, errors, blocksize: int, inner: int = 32,
                  zeros: tuple[torch.Tensor, bool] | None = None) -> None:
    """Columns left to right in blocks (the mask is chosen per block); inside a block, in sub-blocks
    of `inner` columns so the per-column updates stay small and the rest goes through matmuls.

    Same arithmetic as updating the whole block after every column, in a different order: the
    per-column loop is memory-bound, so it should touch as few columns as it can (the solve as a whole
    is timed by `benchmarks/pruning/expansion_parts.py`).
    """
    if sparsity.structured:
        inner = max(sparsity.m, inner // sparsity.m * sparsity.m)  # N:M groups never straddle sub-blocks
    ncols = W.shape[-1]
    for i1 in range(0, ncols, blocksize):
        i2 = min(i1 + blocksize, ncols)
        Hinv1 = Hinv[..., i1:i2, i1:i2]
        d1 = torch.diagonal(Hinv1, dim1=-2, dim2=-1)  # [B, cols]
        # Column-major copy of the block: each column is then one contiguous [B, out] slab.
        W1 = W[..., i1:i2].transpose(-1, -2).contiguous()  # [B, cols, out]
        if zeros is not None:
            counts, per_row = zeros
            scores = (W1**2 / d1.unsqueeze(-1) ** 2).transpose(-1, -2)  # [B, out, cols]
            block = counts[..., i1 // blocksize]
            if per_row:
                mask1 = mask_counts(scores, block)
            else:
                mask1 = mask_counts(scores.reshape(scores.shape[0], -1), block).reshape(scores.shape)
            mask1 = mask1.transpose(-1, -2)
        elif not sparsity.structured:
            scores = W1**2 / d1.unsqueeze(-1) ** 2
            mask1 = mask_lowest(scores.transpose(-1, -2), sparsity, per_row=False).transpose(-1, -2)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        Err1 = torch.empty_like(W1)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            with one_thread(W1.device):  # many tiny ops: thread hand-offs cost more than they save
                _solve_columns(W1, Err1, Hinv1, d1, mask1, sparsity, quantizer, j1, j2, i1)
            W1[..., j2:, :] -= Hinv1[..., j1:j2, j2:].transpose(-1, -2) @ Err1[..., j1:j2, :]
        W[..., i1:i2] = W1.transpose(-1, -2)
        errors += Err1.square().sum(dim=(-2, -1)) / 2  # each column's (w - q)^2 / [H^-1]_jj^2
        W[..., i2:] -= Err1.transpose(-1, -2) @ Hinv[..., i1:i2, i2:]


def _solve_columns(W1, Err1, Hinv1, d1, mask1, sparsity: Sparsity, quantizer, j1: int, j2: int,
                   start: int = 0) -> None:
    """Prune/quantize columns j1..j2 of a block one by one (W1 is [B, cols, out], its first column
    weight column `start`), spreading each column's error over the sub-block's remaining columns; W1[j]
    ends up holding the final column. A quantization group starting here gets its grid fit on its
    columns as they are now, pruned weights left out (those the mask has chosen so far)."""
    for i in range(j1, j2):
        if quantizer is not None and quantizer.starts_group(start + i):
            cols = W1[..., i:i + quantizer.group_size, :].masked_fill(mask1[..., i:i + quantizer.group_size, :], 0.0)
            quantizer.fit_group(start + i, cols.transpose(-1, -2))
        w = W1[..., i, :]
        d = d1[..., i].unsqueeze(-1)
        if sparsity.structured and i % sparsity.m == 0:
            group = W1[..., i : i + sparsity.m, :] ** 2 / d1[..., i : i + sparsity.m].unsqueeze(-1) ** 2
            mask1[..., i : i + sparsity.m, :] = mask_lowest(group.transpose(-1, -2), sparsity,
                                                             per_row=True).transpose(-1, -2)
        q = w.masked_fill(mask1[..., i, :], 0.0)
        if quantizer is not None:
            q = torch.where(mask1[..., i, :], q, quantizer(q, start + i))
        err = (w - q) / d
        W1[..., i + 1 : j2, :] -= Hinv1[..., i, i + 1 : j2].unsqueeze(-1) * err.unsqueeze(-2)
        W1[..., i, :] = q
        Err1[..., i, :] = err

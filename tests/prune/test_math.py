"""Exact behaviour of the pruning math on hand-built and random cases."""

import pytest
import torch

from sparse_expansion.errors import UsageError
from sparse_expansion.prune import magnitude_prune, parse_sparsity, sparsegpt_solve, wanda_prune
from sparse_expansion.prune.sparsity import mask_lowest


def correlated_inputs(n=2048, d=64, seed=0):
    """Inputs with very unequal feature scales and correlations, like real activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    scales = torch.rand(d, generator=g) * 4 + 0.1
    return (torch.randn(n, d, generator=g) @ mix) * scales


def hessian(x):
    return 2 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize("text,expected", [("0.5", 0.5), ("0", 0.0), ("2:4", 0.5), ("1:4", 0.75)])
def test_parse_sparsity(text, expected):
    assert parse_sparsity(text).zero_fraction == expected


@pytest.mark.parametrize("bad", ["1", "1.5", "-0.1", "abc", "4:2", "2:4:8", "a:b", "0:4"])
def test_parse_sparsity_rejects(bad):
    with pytest.raises(UsageError):
        parse_sparsity(bad)


def test_wanda_two_four_hand_built():
    # As in torchao's test: weights 1..8 with equal input norms keep the two largest of each four.
    weight = torch.arange(1.0, 9.0).unsqueeze(0)
    out = wanda_prune(weight, torch.ones(8), parse_sparsity("2:4"))
    assert out.tolist() == [[0, 0, 3, 4, 0, 0, 7, 8]]


def test_wanda_uses_input_norms():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([100.0, 1.0, 1.0, 0.01])  # squared norms: column 0 matters most
    out = wanda_prune(weight, norms, parse_sparsity("0.5"))
    assert out.tolist() == [[1.0, 0.0, 3.0, 0.0]]


def test_magnitude_one_threshold_per_matrix():
    weight = torch.tensor([[1.0, -9.0], [2.0, 3.0]])
    out = magnitude_prune(weight, parse_sparsity("0.5"))
    assert out.tolist() == [[0.0, -9.0], [0.0, 3.0]]  # both zeros may land in one column/row


@pytest.mark.parametrize("sparsity", ["0.5", "0.7", "0.9"])
def test_achieved_sparsity_exact(sparsity):
    s = parse_sparsity(sparsity)
    weight = torch.randn(48, 256)
    x = correlated_inputs(d=256)
    assert (magnitude_prune(weight, s) == 0).sum() == int(weight.numel() * s.fraction)
    rows = (wanda_prune(weight, x.pow(2).mean(0), s) == 0).sum(1)
    assert (rows == int(256 * s.fraction)).all()  # per row
    new, _ = sparsegpt_solve(weight, hessian(x), s)
    # SparseGPT picks its mask per 128-column block at the block's quantile.
    blocks = [(new[:, i : i + 128] == 0).sum().item() for i in range(0, 256, 128)]
    assert blocks == [int(48 * 128 * s.fraction)] * 2


@pytest.mark.parametrize("nm", ["2:4", "1:4", "4:8"])
def test_n_m_per_group(nm):
    s = parse_sparsity(nm)
    weight = torch.randn(16, 64)
    x = correlated_inputs(d=64)
    for out in (magnitude_prune(weight, s), wanda_prune(weight, x.pow(2).mean(0), s),
                sparsegpt_solve(weight, hessian(x), s)[0]):
        nonzero_per_group = (out != 0).reshape(16, -1, s.m).sum(-1)
        assert (nonzero_per_group == s.n).all()


def test_sparsity_zero_is_identity():
    s = parse_sparsity("0")
    weight = torch.randn(32, 64)
    x = correlated_inputs(d=64)
    assert torch.equal(magnitude_prune(weight, s), weight)
    assert torch.equal(wanda_prune(weight, x.pow(2).mean(0), s), weight)
    new, _ = sparsegpt_solve(weight, hessian(x), s)
    assert torch.allclose(new, weight, atol=1e-6)


def test_sparsegpt_beats_wanda_beats_magnitude_on_correlated_inputs():
    s = parse_sparsity("0.6")
    weight = torch.randn(64, 128)
    x = correlated_inputs(d=128)

    def err(w):
        return ((x @ weight.t() - x @ w.t()) ** 2).sum().item()

    sg = err(sparsegpt_solve(weight, hessian(x), s)[0])
    wa = err(wanda_prune(weight, x.pow(2).mean(0), s))
    mg = err(magnitude_prune(weight, s))
    assert sg < wa < mg


def test_sparsegpt_batched_equals_one_by_one():
    s = parse_sparsity("0.5")
    weights = torch.randn(3, 16, 64)
    hs = torch.stack([hessian(correlated_inputs(d=64, seed=i)) for i in range(3)])
    batched, _ = sparsegpt_solve(weights, hs, s)
    for i in range(3):
        single, _ = sparsegpt_solve(weights[i], hs[i], s)
        assert torch.allclose(batched[i], single, atol=1e-5)


def test_sparsegpt_indefinite_hessian_retries_with_more_damping():
    d = 16
    h = 2 * torch.ones(d, d) - torch.eye(d)  # eigenvalues 2d-1 and -1: Cholesky fails at 1% damping
    new, info = sparsegpt_solve(torch.randn(8, d), h, parse_sparsity("0.5"))
    assert torch.isfinite(new).all()
    assert info["damping"][0] > 0.01


def test_sparsegpt_dead_inputs_are_dropped():
    x = correlated_inputs(d=32)
    x[:, 5] = 0
    new, _ = sparsegpt_solve(torch.randn(8, 32), hessian(x), parse_sparsity("0.25"))
    assert (new[:, 5] == 0).all() and torch.isfinite(new).all()


def test_fused_quantization_grid_and_sparsity():
    s = parse_sparsity("0.5")
    weight = torch.randn(16, 128)
    x = correlated_inputs(d=128)
    new, _ = sparsegpt_solve(weight, hessian(x), s, bits=3)
    assert (new == 0).sum() >= int(weight.numel() * 0.5)
    for row in new:
        assert row[row != 0].unique().numel() <= 2**3  # every kept weight is on the row's 3-bit grid


def test_mask_lowest_breaks_ties_exactly():
    scores = torch.ones(4, 8)
    assert mask_lowest(scores, parse_sparsity("0.5"), per_row=False).sum() == 16


def test_upper_cholesky_of_inverse_matches_the_textbook_route():
    from sparse_expansion.prune.sparsegpt import upper_cholesky_of_inverse

    x = correlated_inputs(d=48)
    h = hessian(x) + 0.01 * torch.eye(48)
    reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    fast, info = upper_cholesky_of_inverse(h.unsqueeze(0))
    assert info.item() == 0
    assert torch.allclose(fast[0], reference, atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast[0].t() @ fast[0], torch.linalg.inv(h), atol=1e-3, rtol=1e-3)


def test_mask_lowest_matches_a_full_sort_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (3, 6, 40), generator=g).float()  # many ties
    for fraction in (0.1, 0.5, 0.73):
        s = parse_sparsity(str(fraction))
        mask = mask_lowest(scores, s, per_row=False)
        flat = scores.reshape(3, -1)
        order = torch.argsort(flat, dim=-1, stable=True)[:, : int(flat.shape[1] * fraction)]
        expected = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, order, True)
        assert torch.equal(mask.reshape(3, -1), expected)


def textbook_sparsegpt(weight, h, fraction, blocksize):
    """SparseGPT as the paper's pseudo-code: explicit H^-1, its upper Cholesky factor, the mask
    chosen per block of columns, and the OBS update of every later column after each column."""
    W = weight.clone().double()
    d = W.shape[1]
    hinv = torch.linalg.inv(h.double() + 0.01 * torch.diagonal(h).mean() * torch.eye(d, dtype=torch.float64))
    U = torch.linalg.cholesky(hinv, upper=True)
    loss = 0.0
    for b in range(0, d, blocksize):
        cols = slice(b, b + blocksize)
        scores = W[:, cols] ** 2 / torch.diagonal(U)[cols] ** 2
        drop = int(scores.numel() * fraction)
        mask = torch.zeros_like(scores, dtype=torch.bool).flatten()
        mask[scores.flatten().argsort()[:drop]] = True
        mask = mask.view_as(scores)
        for j in range(b, min(b + blocksize, d)):
            q = W[:, j].masked_fill(mask[:, j - b], 0.0)
            err = (W[:, j] - q) / U[j, j]
            loss += float(err.square().sum()) / 2  # the OBS estimate of the output error
            W[:, j:] -= err.unsqueeze(1) * U[j, j:].unsqueeze(0)
            W[:, j] = q
    return W.float(), loss


@pytest.mark.parametrize("blocksize", [32, 128])
def test_sparsegpt_matches_textbook_loop(blocksize):
    # Our solver reorders the updates (sub-blocks, matmuls, a reversed-Cholesky factor); the result
    # must still be the paper's algorithm: same mask, same surviving values.
    x = correlated_inputs(n=4096, d=160, seed=3)
    weight = torch.randn(24, 160, generator=torch.Generator().manual_seed(4))
    ours, info = sparsegpt_solve(weight, hessian(x), parse_sparsity("0.6"), blocksize=blocksize)
    reference, loss = textbook_sparsegpt(weight, hessian(x), 0.6, blocksize)
    assert info["error"][0] == pytest.approx(loss, rel=1e-3)
    assert torch.equal(ours == 0, reference == 0)
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-4)

"""formats.fit_grid's "mse" grids: never a larger rounding error than the min/max grid, group by group,
the same stored format (integer zero codes, exact round trips), deterministic and independent of how
the search is chunked."""

from __future__ import annotations

import pytest
import torch

from sparse_expansion.kernels import formats as F


def rows(kind: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(*shape, generator=g)
    if kind == "heavy":  # Student-t with 2 degrees of freedom: a few large outliers in most groups
        return torch.randn(*shape, generator=g) / torch.sqrt(torch.rand(*shape, generator=g).clamp_min(1e-3))
    if kind == "sparse":  # 70% pruned, one-signed rows too (lo or hi of the range is 0)
        w = torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) > 0.7)
        w[..., 0, :] = w[..., 0, :].abs()
        w[..., 1, :] = -w[..., 1, :].abs()
        return w
    raise ValueError(kind)


def group_errors(w: torch.Tensor, bits: int, group: int, method: str) -> torch.Tensor:
    """[..., rows, groups] squared error of w stored as codes on `method`'s grid and read back."""
    scales, zeros = F.fit_grid(w, bits, group, method)
    err = (F.decompress(F.quantize(w, "dense", bits, group, scales, zeros)) - w).square()
    pad = -w.shape[-1] % group
    err = torch.cat([err, err.new_zeros(*err.shape[:-1], pad)], dim=-1)
    return err.reshape(*err.shape[:-1], -1, group).sum(-1)


@pytest.mark.parametrize("kind", ["normal", "heavy", "sparse"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32, 7])
def test_searched_grid_never_rounds_worse_than_min_max(kind, bits, group):
    w = rows(kind, (2, 9, 70))  # 70 columns: groups of 32 and of 7 leave a short last group (6, 0)
    g = 70 if group is None else group
    mse, minmax = group_errors(w, bits, g, "mse"), group_errors(w, bits, g, "minmax")
    assert (mse <= minmax).all()
    if bits == 4 and kind == "heavy":  # clipping pays where outliers stretch the range
        assert mse.sum() < 0.97 * minmax.sum()


@pytest.mark.parametrize("bits", [8, 4])
def test_zero_is_an_integer_code_on_the_grid_and_codes_round_trip(bits):
    w = torch.cat([rows("heavy", (6, 53)), rows("sparse", (6, 53), 1)])
    w[3] = 0.0  # an all-zero row
    w[4, :16] = 0.0  # an all-zero group
    scales, zeros = F.fit_grid(w, bits, 16, "mse")
    assert scales.shape == zeros.shape == (12, 4) and (scales > 0).all()
    assert torch.equal(zeros, zeros.round()) and zeros.min() >= 0 and zeros.max() <= 2**bits - 1
    minmax_scales, minmax_zeros = F.fit_grid(w, bits, 16)
    assert torch.equal(scales[3], minmax_scales[3]) and torch.equal(zeros[4, 0], minmax_zeros[4, 0])  # [-1, 1]
    for fmt in ("dense", "bitmask"):
        q = F.quantize(w, fmt, bits, 16, scales, zeros)
        back = F.decompress(q)
        assert torch.equal(back[w == 0], torch.zeros(int((w == 0).sum())))  # pruned weights stay exactly 0
        again = F.quantize(back, fmt, bits, 16, scales, zeros, exact=True)  # read back, stored again: same codes
        assert all(torch.equal(a, b) for a, b in zip(q.tensors().values(), again.tensors().values()))


def test_search_is_deterministic_and_independent_of_chunks_and_of_leading_dims(monkeypatch):
    w = rows("heavy", (3, 40, 96), 2)
    for group in (96, 32, 16):
        want = F.fit_grid(w, 4, group, "mse")
        assert all(torch.equal(a, b) for a, b in zip(want, F.fit_grid(w, 4, group, "mse")))
        flat = F.fit_grid(w.reshape(120, 96), 4, group, "mse")
        assert all(torch.equal(a.reshape(120, -1), b) for a, b in zip(want, flat))
        monkeypatch.setattr(F, "_SEARCH_CHUNK", 5 * group)  # five groups a step, the last step shorter
        assert all(torch.equal(a, b) for a, b in zip(want, F.fit_grid(w, 4, group, "mse")))
        monkeypatch.undo()


def test_per_row_is_one_group_of_the_whole_row_and_unknown_methods_are_refused():
    w = rows("normal", (5, 24))
    assert all(torch.equal(a, b) for a, b in zip(F.fit_grid(w, 4, None, "mse"), F.fit_grid(w, 4, 24, "mse")))
    with pytest.raises(ValueError, match="grid method must be one of minmax, mse"):
        F.fit_grid(w, 4, 8, "percentile")

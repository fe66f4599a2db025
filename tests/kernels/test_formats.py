"""Compressed formats: exact layouts on hand-built cases, exact round trips, loud validation."""

from __future__ import annotations

import pytest
import torch
from helpers import nm_weight, unstructured_weight

from sparse_expansion.kernels import formats as F

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def test_bitmask_layout_by_hand():
    w = torch.tensor([[0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0],
                      [0.0] * 10,
                      [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 6.0]])
    c = F.compress(w, "bitmask", torch.float32)
    # bit j of byte b = column 8b + j, least significant bit first; rows padded to whole bytes
    assert c.index.tolist() == [[0b00000010, 0b11], [0, 0], [0b10000001, 0b10]]
    assert c.values.tolist() == [2.0, 3.0, 4.0, 1.0, 5.0, 6.0]
    assert c.row_offsets.tolist() == [0, 3, 3, 6]
    assert c.tensors().keys() == {"values", "mask", "row_offsets"}


def test_popcount_of_every_byte_and_row_offsets():
    every = torch.arange(256, dtype=torch.uint8)
    assert F.popcount_bytes(every).tolist() == [bin(i).count("1") for i in range(256)]
    mask = torch.randint(0, 256, (3, 5, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    counts = [sum(bin(b).count("1") for b in row) for row in mask.reshape(15, 9).tolist()]
    assert F.row_offsets_from_mask(mask).tolist() == [0, *torch.tensor(counts).cumsum(0).tolist()]


def test_nm_layout_by_hand():
    w = torch.tensor([[0.0, 7.0, 0.0, 8.0, 9.0, 0.0, 0.0, 0.0]])  # 2:4: second group has one non-zero
    c = F.compress(w, "2:4", torch.float32)
    assert c.values.tolist() == [[7.0, 8.0, 9.0, 0.0]]
    # positions (1, 3) and (0, then the lowest free one, 1), two bits each, least significant first
    assert c.index.tolist() == [[1 | 3 << 2 | 0 << 4 | 1 << 6]]
    w8 = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 6.0, 0.0, 0.0]])  # 2:8 uses 4-bit positions
    assert F.compress(w8, "2:8", torch.float32).index.tolist() == [[2 | 5 << 4]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(13, 21), (3, 7, 33), (1, 8), (5, 1)])
def test_bitmask_round_trip_is_exact(dtype, shape):
    w = unstructured_weight(shape, 0.4)
    c = F.compress(w, "bitmask", dtype)
    c.validate()
    assert torch.equal(F.decompress(c), w.to(dtype))
    assert c.values.dtype == dtype and c.values.numel() == int((w.to(dtype) != 0).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["2:4", "4:8", "1:4", "2:8", "8:16", "3:8", "1:2", "2:3"])
def test_nm_round_trip_is_exact(dtype, fmt):
    n, m = F.parse_format(fmt)
    for shape in [(6, 4 * m), (2, 5, 6 * m), (3, m)]:
        w = nm_weight(shape, n, m)
        c = F.compress(w, fmt, dtype)
        c.validate()
        assert c.values.shape == (*shape[:-1], shape[-1] * n // m)
        assert torch.equal(F.decompress(c), w.to(dtype))


def test_cast_underflow_is_not_stored():
    w = torch.tensor([[1e-9, 1.0, 0.0, 2.0]])  # 1e-9 is 0 in fp16
    c = F.compress(w, "bitmask", torch.float16)
    assert c.values.numel() == 2 and torch.equal(F.decompress(c), w.half())


def test_nm_refuses_too_many_nonzeros():
    with pytest.raises(ValueError, match="more than 2 non-zeros"):
        F.compress(torch.ones(2, 8), "2:4")
    with pytest.raises(ValueError, match="divisible"):
        F.compress(torch.zeros(2, 6), "2:4")
    with pytest.raises(ValueError, match="0 < N < M <= 16"):
        F.parse_format("4:4")
    with pytest.raises(ValueError, match="unknown compressed format"):
        F.parse_format("csr")


def test_validate_catches_inconsistent_tensors():
    c = F.compress(unstructured_weight((6, 20), 0.5), "bitmask", torch.float16)
    bad = dict(c.tensors(), row_offsets=c.row_offsets.flip(0))
    with pytest.raises(ValueError):
        F.CompressedWeight.from_tensors("bitmask", c.shape, bad)
    with pytest.raises(ValueError):
        F.CompressedWeight.from_tensors("bitmask", c.shape, dict(c.tensors(), values=c.values[:-1]))
    c3 = F.compress(nm_weight((4, 12), 2, 3), "2:3", torch.float32)
    with pytest.raises(ValueError, match="outside their group"):
        F.CompressedWeight.from_tensors("2:3", c3.shape, dict(c3.tensors(), indices=c3.index | 0xFF))
    # offsets may be left out of a file: they are the mask's popcounts
    again = F.CompressedWeight.from_tensors("bitmask", c.shape, {"values": c.values, "mask": c.index})
    assert torch.equal(again.row_offsets, c.row_offsets)


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_expert_slices_and_empty_spec(fmt):
    w = nm_weight((3, 5, 16), 2, 4)
    c = F.compress(w, fmt, torch.bfloat16)
    for e in range(3):
        assert torch.equal(F.decompress(c.expert(e)), w[e].bfloat16())
    empty = F.CompressedWeight.empty(c.spec())
    assert {k: (v.shape, v.dtype) for k, v in empty.tensors().items()} == {
        k: (v.shape, v.dtype) for k, v in c.tensors().items()}


def test_choose_format():
    assert F.choose_format(nm_weight((8, 32), 2, 4)) == "2:4"
    assert F.choose_format(nm_weight((8, 32), 4, 8)) == "4:8"
    assert F.choose_format(unstructured_weight((8, 32), 0.5)) == "bitmask"
    very_sparse = torch.zeros(8, 32)
    very_sparse[0, 0] = 1.0  # satisfies 2:4, but would store 50% of the weights as fillers
    assert F.choose_format(very_sparse) == "bitmask"


def test_converts_the_saved_expert_layout_without_densifying():
    from sparse_expansion.expand.module import pack_sparse

    experts = unstructured_weight((3, 7, 13), 0.4)
    values, packed = pack_sparse(experts)
    weight = F.bitmask_from_flat_msb(values, packed, tuple(experts.shape))
    assert torch.equal(F.decompress(weight), experts)
    half = weight.with_value_dtype("float16")
    assert torch.equal(F.decompress(half), experts.half())

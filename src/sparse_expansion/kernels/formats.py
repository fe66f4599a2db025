"""Compressed weight formats: plain tensors, the same in memory and on disk.

A weight is `[out, in]` (one linear) or `[k, out, in]` (k stacked experts); every format below
treats it as R = k * out rows of `in` inputs, in row-major order (expert, then row).

**bitmask** (any sparsity pattern):
  - `values`  [nnz] value dtype: the non-zeros of every row, rows in order, columns ascending.
  - `mask`    [k, out, ceil(in / 8)] uint8 ([out, ...] for one linear): bit j of byte b (least
    significant bit first) says whether column 8b + j is stored. Each row starts on a fresh byte,
    so a kernel reads one row's mask without shifting, and one byte is one 8-wide AVX2 lane
    group. Padding bits are 0.
  - `row_offsets` [R + 1] int64: where each row starts in `values` (the prefix sum of the mask's
    popcounts; `row_offsets_from_mask` recomputes it, so a file may drop it).

**N:M** (at most N non-zeros in every M consecutive inputs; 0 < N < M <= 16, M divides in):
  - `values`  [k, out, in * N / M] value dtype ([out, ...] for one linear): exactly N values per group, groups in order.
  - `indices` [k, out, ceil(in * N / M * bits / 8)] uint8: each value's position inside its group,
    `bits` = 2 when M <= 4 else 4, packed least significant bits first, each row starting on a
    fresh byte. Within a group positions are distinct and ascending; a group with fewer than N
    non-zeros stores zeros at its lowest free positions. With N dividing 8, eight values (one
    AVX2 register) have their positions in one 16- or 32-bit word.

Unpacking in plain torch (and `parse_format`, `index_bits`, `row_offsets_from_mask`) lives in
hub/modeling_sparse_expansion.py, the file saved folders carry for trust_remote_code loading:
this module imports it, so a folder's code and ours read the same tensors the same way.

Value dtypes: float32, bfloat16, float16. The mask is taken after the cast, so
`decompress(compress(w, f, d)) == w.to(d)` exactly (-0.0 comes back as +0.0).
bitmask at density p costs p * bytes(dtype) + 1/8 bytes a weight; 2:4 costs
(bytes(dtype) + 1/4) / 2: fp16 at 50% is 1.125 bytes in either format, against 4 for dense fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..hub.modeling_sparse_expansion import (
    index_bits,
    parse_format,
    row_offsets_from_mask,
    unpack_bitmask,
    unpack_indices,
    unpack_nm,
)
from ..hub.modeling_sparse_expansion import nm_columns as _nm_columns

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in VALUE_DTYPES.items()}


def value_dtype_of(name_or_dtype: str | torch.dtype) -> torch.dtype:
    dtype = VALUE_DTYPES.get(name_or_dtype) if isinstance(name_or_dtype, str) else name_or_dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"value dtype must be one of {sorted(VALUE_DTYPES)}, got {name_or_dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


@dataclass(frozen=True)
class CompressedWeight:
    """One compressed [out, in] or [k, out, in] weight: format, dense shape and its tensors.

    `index` is the bitmask's `mask` or the N:M `indices`; `row_offsets` is None for N:M."""

    format: str
    shape: tuple[int, ...]
    values: torch.Tensor
    index: torch.Tensor
    row_offsets: torch.Tensor | None = None

    @cached_property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) of an N:M weight, None for bitmask (parsed once: kernels ask on every call)."""
        return parse_format(self.format)

    def expert(self, e: int) -> CompressedWeight:
        """Expert e of a [k, out, in] weight, as an [out, in] weight (views, no copy of values)."""
        if len(self.shape) != 3 or not 0 <= e < self.shape[0]:
            raise IndexError(f"expert {e} of a weight shaped {list(self.shape)}")
        if self.row_offsets is None:
            return CompressedWeight(self.format, self.shape[1:], self.values[e], self.index[e])
        out = self.shape[1]
        offsets = self.row_offsets[e * out:(e + 1) * out + 1]
        start, end = int(offsets[0]), int(offsets[-1])
        return CompressedWeight(self.format, self.shape[1:], self.values[start:end], self.index[e], offsets - start)

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def value_dtype(self) -> torch.dtype:
        return self.values.dtype

    def with_value_dtype(self, dtype: torch.dtype | str) -> CompressedWeight:
        """The same weight with its values cast: a value that becomes 0 stays stored, which every
        kernel accepts (it multiplies by zero) and `nonzeros` counts do not include."""
        return CompressedWeight(self.format, self.shape, self.values.to(value_dtype_of(dtype)), self.index,
                                self.row_offsets)

    def nbytes(self) -> int:
        parts = [self.values, self.index] + ([self.row_offsets] if self.row_offsets is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by their file names: what a state dict or safetensors file holds."""
        if self.row_offsets is None:
            return {"values": self.values, "indices": self.index}
        return {"values": self.values, "mask": self.index, "row_offsets": self.row_offsets}

    @classmethod
    def from_tensors(cls, fmt: str, shape: tuple[int, ...], tensors: dict[str, torch.Tensor]) -> CompressedWeight:
        """Rebuild from `tensors()`, checked so a kernel never reads out of bounds."""
        if parse_format(fmt) is None:
            offsets = tensors.get("row_offsets")
            if offsets is None:
                offsets = row_offsets_from_mask(tensors["mask"])
            weight = cls(fmt, tuple(shape), tensors["values"], tensors["mask"], offsets)
        else:
            weight = cls(fmt, tuple(shape), tensors["values"], tensors["indices"])
        weight.validate()
        return weight

    def validate(self) -> None:
        """Raise ValueError unless shapes, dtypes and (bitmask) offsets agree with each other."""
        value_dtype_of(self.values.dtype)
        if len(self.shape) not in (2, 3):
            raise ValueError(f"compressed weight shape must be [out, in] or [k, out, in], got {self.shape}")
        rows, cols = self.rows, self.in_features
        nm = parse_format(self.format)
        if nm is None:
            want = (*self.shape[:-1], (cols + 7) // 8)
            if self.index.dtype != torch.uint8 or tuple(self.index.shape) != want:
                raise ValueError(f"bitmask mask must be uint8 {list(want)}, got {self.index.dtype} "
                                 f"{list(self.index.shape)}")
            offsets = self.row_offsets
            if offsets is None or offsets.dtype != torch.int64 or tuple(offsets.shape) != (rows + 1,):
                raise ValueError(f"bitmask row_offsets must be int64 [{rows + 1}]")
            if self.values.dim() != 1 or int(offsets[-1]) != self.values.numel():
                raise ValueError(f"bitmask holds {self.values.numel()} values, offsets say {int(offsets[-1])}")
            if not torch.equal(offsets, row_offsets_from_mask(self.index)):
                raise ValueError("bitmask row_offsets disagree with the mask's popcounts")
            return
        n, m = nm
        if cols % m:
            raise ValueError(f"{self.format} needs in_features divisible by {m}, got {cols}")
        per_row = cols // m * n
        want_idx = (*self.shape[:-1], (per_row * index_bits(m) + 7) // 8)
        if tuple(self.values.shape) != (*self.shape[:-1], per_row):
            raise ValueError(f"{self.format} values must be {[*self.shape[:-1], per_row]}, "
                             f"got {list(self.values.shape)}")
        if self.index.dtype != torch.uint8 or tuple(self.index.shape) != want_idx:
            raise ValueError(f"{self.format} indices must be uint8 {list(want_idx)}, got {list(self.index.shape)}")
        if m not in (4, 16) and bool((unpack_indices(self.index.reshape(rows, -1), per_row, index_bits(m)) >= m).any()):
            raise ValueError(f"{self.format} indices point outside their group of {m}")

    def spec(self) -> dict[str, Any]:
        """JSON-able description: with `from_spec` enough to allocate the buffers before loading."""
        return {"format": self.format, "shape": list(self.shape), "value_dtype": dtype_name(self.value_dtype),
                "stored_values": self.values.numel()}

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> CompressedWeight:
        """Buffers of the right shapes and dtypes, contents to be loaded (not validated)."""
        fmt, shape = spec["format"], tuple(int(s) for s in spec["shape"])
        dtype = value_dtype_of(spec["value_dtype"])
        rows, cols = math.prod(shape[:-1]), shape[-1]
        nm = parse_format(fmt)
        if nm is None:
            values = torch.zeros(int(spec["stored_values"]), dtype=dtype)
            return cls(fmt, shape, values, torch.zeros(*shape[:-1], (cols + 7) // 8, dtype=torch.uint8),
                       torch.zeros(rows + 1, dtype=torch.int64))
        n, m = nm
        per_row = cols // m * n
        return cls(fmt, shape, torch.zeros(*shape[:-1], per_row, dtype=dtype),
                   torch.zeros(*shape[:-1], (per_row * index_bits(m) + 7) // 8, dtype=torch.uint8))


# --- bitmask --------------------------------------------------------------------------------------

_BIT = 1 << torch.arange(8, dtype=torch.uint8)


def _bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    """[R, C] bool -> [R, ceil(C/8)] uint8, least significant bit first, zero padded."""
    rows, cols = bits.shape
    padded = torch.zeros(rows, (cols + 7) // 8 * 8, dtype=torch.uint8, device=bits.device)
    padded[:, :cols] = bits
    return (padded.view(rows, -1, 8) * _BIT.to(bits.device)).sum(-1, dtype=torch.uint8)


def bitmask_from_flat_msb(values: torch.Tensor, packed: torch.Tensor, shape: tuple[int, ...]) -> CompressedWeight:
    """Convert expand.module.pack_sparse's layout (one MSB-first bitmask over the whole flattened
    tensor, values in the same row-major order) without a dense detour: only the mask is redone."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    bits = (packed.unsqueeze(-1) >> torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)) & 1
    keep = bits.flatten()[: rows * cols].reshape(rows, cols).bool()
    mask = _bits_to_bytes(keep)
    weight = CompressedWeight("bitmask", tuple(shape), values.flatten(), mask.reshape(*shape[:-1], -1),
                              row_offsets_from_mask(mask))
    weight.validate()
    return weight


def compress_bitmask(dense: torch.Tensor, value_dtype: torch.dtype) -> CompressedWeight:
    w = dense.detach().to(value_dtype).reshape(-1, dense.shape[-1])
    keep = w != 0
    mask = _bits_to_bytes(keep)
    offsets = row_offsets_from_mask(mask)
    mask = mask.reshape(*dense.shape[:-1], -1)
    return CompressedWeight("bitmask", tuple(dense.shape), w[keep].contiguous(), mask, offsets)


def decompress_bitmask(weight: CompressedWeight) -> torch.Tensor:
    return unpack_bitmask(weight.values, weight.index, weight.shape)


# --- N:M ------------------------------------------------------------------------------------------

def pack_indices(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, V] small ints -> [R, ceil(V * bits / 8)] uint8, least significant bits first."""
    rows, count = idx.shape
    per_byte = 8 // bits
    padded = torch.zeros(rows, (count + per_byte - 1) // per_byte * per_byte, dtype=torch.uint8, device=idx.device)
    padded[:, :count] = idx
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=idx.device)
    return (padded.view(rows, -1, per_byte) << shifts).sum(-1, dtype=torch.uint8)


def satisfies_nm(dense: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of M consecutive inputs holds at most N non-zeros."""
    cols = dense.shape[-1]
    if cols % m:
        return False
    return bool(((dense != 0).reshape(-1, cols // m, m).sum(-1) <= n).all())


def compress_nm(dense: torch.Tensor, n: int, m: int, value_dtype: torch.dtype) -> CompressedWeight:
    cols = dense.shape[-1]
    if cols % m:
        raise ValueError(f"{n}:{m} needs in_features divisible by {m}, got {cols}")
    w = dense.detach().to(value_dtype).reshape(-1, cols // m, m)
    keep = w != 0
    if bool((keep.sum(-1) > n).any()):
        raise ValueError(f"weight has more than {n} non-zeros in some group of {m}: not {n}:{m} sparse")
    # Non-zeros first, then the lowest free positions; then ascending inside the group.
    rank = (~keep).to(torch.int64) * m + torch.arange(m, device=w.device)
    idx = rank.argsort(-1)[..., :n].sort(-1).values
    values = w.gather(-1, idx).reshape(*dense.shape[:-1], -1)
    indices = pack_indices(idx.reshape(w.shape[0], -1).to(torch.uint8), index_bits(m))
    indices = indices.reshape(*dense.shape[:-1], -1)
    return CompressedWeight(f"{n}:{m}", tuple(dense.shape), values.contiguous(), indices)


def nm_columns(weight: CompressedWeight) -> torch.Tensor:
    """[R, in*N/M] int64: the input column of every stored value."""
    return _nm_columns(weight.index, *weight.n_m, weight.values.shape[-1])


def decompress_nm(weight: CompressedWeight) -> torch.Tensor:
    return unpack_nm(weight.values, weight.index, *weight.n_m, weight.shape)


# --- either ---------------------------------------------------------------------------------------

def compress(dense: torch.Tensor, fmt: str = "bitmask", value_dtype: torch.dtype = torch.float16) -> CompressedWeight:
    """Compress an [out, in] or [k, out, in] weight into `fmt` ("bitmask" or "N:M")."""
    if dense.dim() not in (2, 3):
        raise ValueError(f"expected an [out, in] or [k, out, in] weight, got shape {list(dense.shape)}")
    value_dtype = value_dtype_of(value_dtype)
    nm = parse_format(fmt)
    return compress_bitmask(dense, value_dtype) if nm is None else compress_nm(dense, *nm, value_dtype)


def decompress(weight: CompressedWeight) -> torch.Tensor:
    """The dense weight in the value dtype: exactly what was compressed, cast."""
    return decompress_bitmask(weight) if weight.row_offsets is not None else decompress_nm(weight)


def choose_format(dense: torch.Tensor, candidates: tuple[str, ...] = ("2:4", "4:8")) -> str:
    """The first N:M in `candidates` the weight satisfies, else "bitmask".

    N:M is taken only while it stores at most 1.25x the bitmask's bytes at fp16: a 95%-sparse
    weight also satisfies 2:4, but would pay for half its weights as stored zeros."""
    nnz = int((dense != 0).sum())
    bitmask_bits = nnz * 16 + dense.numel()
    for fmt in candidates:
        n, m = parse_format(fmt)
        nm_bits = dense.numel() * n / m * (16 + index_bits(m))
        if satisfies_nm(dense, n, m) and nm_bits <= 1.25 * bitmask_bits:
            return fmt
    return "bitmask"

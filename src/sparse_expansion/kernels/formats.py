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

**Quantized values** ("int8", "int4"; either format above, or "dense": every column stored). The
values are integer codes on an asymmetric grid per row and group of `group_size` input columns
(GPTQ's min/max grid, or that range clipped where rounding loses least: `fit_grid`; a group of the whole
row is per-row):
  - `values`  uint8 codes in the order above: one a byte (int8) or two a byte, low nibble first
    (int4). bitmask: [ceil(nnz * bits / 8)], one stream over all rows (an int4 row may start
    mid-byte); N:M: [k, out, ceil(in * N / M * bits / 8)], dense: [k, out, ceil(in * bits / 8)],
    each row starting on a fresh byte. `row_offsets` and `stored_values` count codes, not bytes.
  - `scales`  [k, out, ceil(in / group_size)] float32, `zeros` the same shape, uint8 (< 2^bits).
  A code c in column j of row r is the weight (c - zeros[r, j // G]) * scales[r, j // G], computed
  in float32: c - zero is an exact integer, so that is one rounding, the very value GPTQ's
  quantizer (`scale * (q - zero)`) produced. An N:M group's filler stores the zero point (0.0);
  a weight whose code is its zero point is 0.0 and a bitmask does not store it. Every kernel
  de-quantizes exactly this way and then accumulates in float32 as for float32 values (ops.py).
  int4 bitmask at 30% density, G = 128: 0.15 + 0.125 + 5/128 = 0.31 bytes a weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..hub.modeling_sparse_expansion import (
    QUANT_BITS,
    index_bits,
    parse_format,
    popcount_bytes,
    quantized_value_bytes,
    row_offsets_from_mask,
    unpack_bitmask,
    unpack_bits,
    unpack_codes,
    unpack_indices,
    unpack_nm,
    unpack_quantized,
)
from ..hub.modeling_sparse_expansion import nm_columns as _nm_columns

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_NAMES = {v: k for k, v in VALUE_DTYPES.items()}


def quant_bits(name: str | torch.dtype) -> int | None:
    """8 for "int8", 4 for "int4", None for a float value dtype."""
    return QUANT_BITS.get(name) if isinstance(name, str) else None


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

    `index` is the bitmask's `mask` or the N:M `indices` (None for "dense"); `row_offsets` is None
    for N:M and dense. Quantized weights (`bits` 8 or 4) also carry `scales`, `zeros` and
    `group_size`; their `values` are uint8 codes (see the module docstring)."""

    format: str
    shape: tuple[int, ...]
    values: torch.Tensor
    index: torch.Tensor | None
    row_offsets: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    bits: int | None = None
    group_size: int | None = None

    @cached_property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) of an N:M weight, None for bitmask and dense (parsed once: kernels ask on every call)."""
        return None if self.format == "dense" else parse_format(self.format)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @cached_property
    def act8_form(self) -> CompressedWeight | None:
        """The weight the act8 decode kernels take for this one: itself (dense, bitmask), the bitmask view
        of a quantized N:M weight (`nm_as_bitmask`, built once), None where there is none."""
        if not self.quantized:
            return None
        return self if self.n_m is None else nm_as_bitmask(self)

    def expert(self, e: int) -> CompressedWeight:
        """Expert e of a [k, out, in] weight, as an [out, in] weight (views, no copy of values; an int4
        bitmask expert whose codes start mid-byte gets its codes re-packed)."""
        if len(self.shape) != 3 or not 0 <= e < self.shape[0]:
            raise IndexError(f"expert {e} of a weight shaped {list(self.shape)}")
        grid = {} if not self.quantized else {"scales": self.scales[e], "zeros": self.zeros[e], "bits": self.bits,
                                               "group_size": self.group_size}
        if self.row_offsets is None:
            return CompressedWeight(self.format, self.shape[1:], self.values[e],
                                    None if self.index is None else self.index[e], **grid)
        out = self.shape[1]
        offsets = self.row_offsets[e * out:(e + 1) * out + 1]
        start, end = int(offsets[0]), int(offsets[-1])
        if not self.quantized:
            values = self.values[start:end]
        elif self.bits == 8:
            values = self.values[start:end]
        elif start % 2 == 0:
            values = self.values[start // 2:(end + 1) // 2]
        else:
            values = pack_codes(unpack_codes(self.values, end, 4)[start:].unsqueeze(0), 4).reshape(-1)
        return CompressedWeight(self.format, self.shape[1:], values, self.index[e], offsets - start, **grid)

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def value_dtype(self) -> torch.dtype:
        """The values' torch dtype: uint8 for quantized codes (see `value_type`)."""
        return self.values.dtype

    @property
    def value_type(self) -> str:
        """"float32", "bfloat16", "float16", "int8" or "int4": what the spec calls the values."""
        return f"int{self.bits}" if self.quantized else dtype_name(self.values.dtype)

    @property
    def groups(self) -> int:
        """Groups of `group_size` columns a row of a quantized weight has."""
        return -(-self.in_features // self.group_size)

    @property
    def stored_values(self) -> int:
        """Values (codes) stored: the bitmask's popcount, or every slot of N:M and dense."""
        if self.row_offsets is not None:
            return int(self.row_offsets[-1])
        per_row = self.in_features if self.n_m is None else self.in_features // self.n_m[1] * self.n_m[0]
        return self.rows * per_row

    def with_value_dtype(self, dtype: torch.dtype | str) -> CompressedWeight:
        """The same weight with its values cast: a value that becomes 0 stays stored, which every
        kernel accepts (it multiplies by zero) and `nonzeros` counts do not include."""
        if self.quantized:
            raise ValueError("quantized values are codes on a grid; decompress them to cast")
        return CompressedWeight(self.format, self.shape, self.values.to(value_dtype_of(dtype)), self.index,
                                self.row_offsets)

    def nonzeros(self) -> int:
        """Stored weights that are not 0.0 (an N:M filler, a float cast to 0, a code at its zero point)."""
        if not self.quantized:
            return int((self.values != 0).sum())
        return int((decompress(self) != 0).sum())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors by their file names: what a state dict or safetensors file holds."""
        grid = {} if not self.quantized else {"scales": self.scales, "zeros": self.zeros}
        if self.format == "dense":
            return {"values": self.values, **grid}
        if self.row_offsets is None:
            return {"values": self.values, "indices": self.index, **grid}
        return {"values": self.values, "mask": self.index, "row_offsets": self.row_offsets, **grid}

    @classmethod
    def from_tensors(cls, fmt: str, shape: tuple[int, ...], tensors: dict[str, torch.Tensor],
                     bits: int | None = None, group_size: int | None = None) -> CompressedWeight:
        """Rebuild from `tensors()`, checked so a kernel never reads out of bounds."""
        grid = {} if bits is None else {"scales": tensors["scales"], "zeros": tensors["zeros"], "bits": bits,
                                        "group_size": group_size}
        if fmt == "dense":
            weight = cls(fmt, tuple(shape), tensors["values"], None, **grid)
        elif parse_format(fmt) is None:
            offsets = tensors.get("row_offsets")
            if offsets is None:
                offsets = row_offsets_from_mask(tensors["mask"])
            weight = cls(fmt, tuple(shape), tensors["values"], tensors["mask"], offsets, **grid)
        else:
            weight = cls(fmt, tuple(shape), tensors["values"], tensors["indices"], **grid)
        weight.validate()
        return weight

    def validate(self) -> None:
        """Raise ValueError unless shapes, dtypes and (bitmask) offsets agree with each other."""
        if len(self.shape) not in (2, 3):
            raise ValueError(f"compressed weight shape must be [out, in] or [k, out, in], got {self.shape}")
        if self.quantized:
            self._validate_grid()
        else:
            value_dtype_of(self.values.dtype)
        rows, cols = self.rows, self.in_features
        if self.format == "dense":
            if not self.quantized:
                raise ValueError("the dense format holds quantized values only")
            want = (*self.shape[:-1], quantized_value_bytes(cols, self.bits))
            if tuple(self.values.shape) != want:
                raise ValueError(f"dense codes must be uint8 {list(want)}, got {list(self.values.shape)}")
            return
        nm = parse_format(self.format)
        if nm is None:
            want = (*self.shape[:-1], (cols + 7) // 8)
            if self.index.dtype != torch.uint8 or tuple(self.index.shape) != want:
                raise ValueError(f"bitmask mask must be uint8 {list(want)}, got {self.index.dtype} "
                                 f"{list(self.index.shape)}")
            offsets = self.row_offsets
            if offsets is None or offsets.dtype != torch.int64 or tuple(offsets.shape) != (rows + 1,):
                raise ValueError(f"bitmask row_offsets must be int64 [{rows + 1}]")
            stored = int(offsets[-1])
            if self.quantized:
                stored = quantized_value_bytes(stored, self.bits)
            if self.values.dim() != 1 or stored != self.values.numel():
                raise ValueError(f"bitmask holds {self.values.numel()} values, offsets say {stored}")
            if not torch.equal(offsets, row_offsets_from_mask(self.index)):
                raise ValueError("bitmask row_offsets disagree with the mask's popcounts")
            return
        n, m = nm
        if cols % m:
            raise ValueError(f"{self.format} needs in_features divisible by {m}, got {cols}")
        per_row = cols // m * n
        want_idx = (*self.shape[:-1], (per_row * index_bits(m) + 7) // 8)
        stored = per_row if not self.quantized else quantized_value_bytes(per_row, self.bits)
        if tuple(self.values.shape) != (*self.shape[:-1], stored):
            raise ValueError(f"{self.format} values must be {[*self.shape[:-1], stored]}, "
                             f"got {list(self.values.shape)}")
        if self.index.dtype != torch.uint8 or tuple(self.index.shape) != want_idx:
            raise ValueError(f"{self.format} indices must be uint8 {list(want_idx)}, got {list(self.index.shape)}")
        if m not in (4, 16) and bool((unpack_indices(self.index.reshape(rows, -1), per_row, index_bits(m)) >= m).any()):
            raise ValueError(f"{self.format} indices point outside their group of {m}")

    def _validate_grid(self) -> None:
        if self.bits not in QUANT_BITS.values():
            raise ValueError(f"quantized values are 8 or 4 bits, got {self.bits}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        want = (*self.shape[:-1], self.groups)
        if self.values.dtype != torch.uint8:
            raise ValueError(f"quantized values must be uint8 codes, got {self.values.dtype}")
        if self.scales is None or self.scales.dtype != torch.float32 or tuple(self.scales.shape) != want:
            raise ValueError(f"scales must be float32 {list(want)}")
        if self.zeros is None or self.zeros.dtype != torch.uint8 or tuple(self.zeros.shape) != want:
            raise ValueError(f"zeros must be uint8 {list(want)}")
        if self.zeros.numel() and int(self.zeros.max()) >= 2 ** self.bits:
            raise ValueError(f"zero points must be below 2^{self.bits}")

    def spec(self) -> dict[str, Any]:
        """JSON-able description: with `from_spec` enough to allocate the buffers before loading."""
        spec = {"format": self.format, "shape": list(self.shape), "value_dtype": self.value_type,
                "stored_values": self.stored_values if self.quantized else self.values.numel()}
        if self.quantized:
            spec["group_size"] = self.group_size
        return spec

    @classmethod
    def empty(cls, spec: dict[str, Any]) -> CompressedWeight:
        """Buffers of the right shapes and dtypes, contents to be loaded (not validated). Uninitialised: a strict
        load writes every byte, and memory not yet written is not yet resident (a load reading one layer at a
        time holds one layer's float weights beside the codes, artifact.load_weights)."""
        fmt, shape = spec["format"], tuple(int(s) for s in spec["shape"])
        bits = quant_bits(spec["value_dtype"])
        rows, cols = math.prod(shape[:-1]), shape[-1]
        grid: dict[str, Any] = {}
        if bits is None:
            dtype = value_dtype_of(spec["value_dtype"])
            count = lambda n: n  # noqa: E731
        else:
            dtype, group = torch.uint8, int(spec["group_size"])
            groups = -(-cols // group)
            grid = {"scales": torch.empty(*shape[:-1], groups), "bits": bits, "group_size": group,
                    "zeros": torch.empty(*shape[:-1], groups, dtype=torch.uint8)}
            count = lambda n: quantized_value_bytes(n, bits)  # noqa: E731
        if fmt == "dense":
            return cls(fmt, shape, torch.empty(*shape[:-1], count(cols), dtype=dtype), None, **grid)
        nm = parse_format(fmt)
        if nm is None:
            values = torch.empty(count(int(spec["stored_values"])), dtype=dtype)
            return cls(fmt, shape, values, torch.empty(*shape[:-1], (cols + 7) // 8, dtype=torch.uint8),
                       torch.empty(rows + 1, dtype=torch.int64), **grid)
        n, m = nm
        per_row = cols // m * n
        return cls(fmt, shape, torch.empty(*shape[:-1], count(per_row), dtype=dtype),
                   torch.empty(*shape[:-1], (per_row * index_bits(m) + 7) // 8, dtype=torch.uint8), **grid)


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
    n, m = weight.n_m
    return _nm_columns(weight.index, n, m, weight.in_features // m * n)


def decompress_nm(weight: CompressedWeight) -> torch.Tensor:
    return unpack_nm(weight.values, weight.index, *weight.n_m, weight.shape)


def nm_as_bitmask(weight: CompressedWeight) -> CompressedWeight | None:
    """A quantized N:M weight as the bitmask weight it stands for, sharing its codes (no copy): one mask
    bit for every stored position (a group's zero fillers included: their code is the zero point, so
    they add nothing), each row `in * N / M` codes after the last. For the act8 decode kernels, which run
    bitmask and dense codes only; for 2:4 the mask costs what the N:M indices cost, one bit a column.
    None for int4 rows that end mid-byte (the codes would not run on from row to row)."""
    if not weight.quantized or weight.n_m is None:
        raise ValueError("nm_as_bitmask takes a quantized N:M weight")
    n, m = weight.n_m
    per_row, rows = weight.in_features // m * n, weight.rows
    if weight.bits == 4 and per_row % 2:
        return None
    keep = torch.zeros(rows, weight.in_features, dtype=torch.bool)
    keep.scatter_(1, nm_columns(weight).reshape(rows, per_row), True)
    mask = _bits_to_bytes(keep).reshape(*weight.shape[:-1], -1)
    offsets = torch.arange(rows + 1, dtype=torch.int64) * per_row
    return CompressedWeight("bitmask", weight.shape, weight.values.reshape(-1), mask, offsets, weight.scales,
                            weight.zeros, weight.bits, weight.group_size)


# --- quantized values ----------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., n] codes < 2^bits -> [..., ceil(n * bits / 8)] uint8: one a byte, or two, low nibble first."""
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    if codes.shape[-1] % 2:
        codes = torch.cat([codes, codes.new_zeros(*codes.shape[:-1], 1)], dim=-1)
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).contiguous()


def group_columns(cols: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """[cols] int64: the group of every input column."""
    return torch.arange(cols, device=device) // group_size


def quantize(dense: torch.Tensor, fmt: str, bits: int, group_size: int, scales: torch.Tensor, zeros: torch.Tensor,
             exact: bool = False) -> CompressedWeight:
    """Encode an [out, in] or [k, out, in] weight on the grid `scales`/`zeros` [..., ceil(in / G)]
    (prune/quantize.py fits one) as `fmt` ("bitmask", "N:M" or "dense") with `bits`-bit codes:
    code = clamp(round(w / scale) + zero, 0, 2^bits - 1), by round-to-nearest. Zeros stay zeros
    (a pruned weight is not stored). `exact`: the weight already lies on the grid (what SparseGPT
    with --bits returns); refuse unless every weight de-quantizes back to itself bit for bit."""
    if bits not in QUANT_BITS.values():
        raise ValueError(f"quantized values are 8 or 4 bits, got {bits}")
    if dense.dim() not in (2, 3):
        raise ValueError(f"expected an [out, in] or [k, out, in] weight, got shape {list(dense.shape)}")
    cols = dense.shape[-1]
    groups = -(-cols // group_size)
    if tuple(scales.shape) != (*dense.shape[:-1], groups) or tuple(zeros.shape) != tuple(scales.shape):
        raise ValueError(f"scales and zeros must be {[*dense.shape[:-1], groups]} for group size {group_size}")
    maxq = 2 ** bits - 1
    w = dense.detach().float()
    g = group_columns(cols, group_size, w.device)
    scale, zero = scales.float()[..., g], zeros.float()[..., g]
    codes = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    codes = torch.where(w == 0, zero, codes)  # a zero stays exactly zero whatever the grid
    value = scale * (codes - zero)
    if exact and not torch.equal(value, w):
        bad = int((value != w).sum())
        raise ValueError(f"{bad} weights are not on the given {bits}-bit grid")
    codes = codes.to(torch.uint8)
    grid = {"scales": scales.float().contiguous(), "zeros": zeros.to(torch.uint8).contiguous(), "bits": bits,
            "group_size": group_size}
    shape = tuple(dense.shape)
    if fmt == "dense":
        weight = CompressedWeight(fmt, shape, pack_codes(codes, bits), None, **grid)
    elif parse_format(fmt) is None:
        structure = compress_bitmask(value, torch.float32)
        keep = unpack_bitmask_bits(structure)
        weight = CompressedWeight(fmt, shape, pack_codes(codes.reshape(-1, cols)[keep], bits),
                                  structure.index, structure.row_offsets, **grid)
    else:
        structure = compress_nm(value, *parse_format(fmt), torch.float32)
        columns = nm_columns(structure).reshape(*shape[:-1], -1)
        weight = CompressedWeight(fmt, shape, pack_codes(codes.gather(-1, columns), bits), structure.index,
                                  **grid)
    weight.validate()
    return weight


def quantize_bitmask(weight: CompressedWeight, bits: int, group_size: int) -> CompressedWeight:
    """What `quantize(decompress(weight), "bitmask", bits, group_size, *fit_grid(decompress(weight), bits,
    group_size))` gives, bit for bit, from the stored values alone: no dense copy. An expanded folder's
    experts are k times the layer, so the dense detour made quantizing a 16-expert folder on load take
    about a minute. min(w, 0) and max(w, 0) over a group are those over its stored values and 0; a
    value that rounds to the zero point leaves the mask, as `quantize` drops it."""
    if weight.format != "bitmask" or weight.quantized:
        raise ValueError("quantize_bitmask takes a bitmask weight with float values")
    rows, cols, maxq = weight.rows, weight.in_features, 2 ** bits - 1
    groups = -(-cols // group_size)
    mask = weight.index.reshape(rows, -1)
    group = _value_groups(mask, weight.row_offsets, cols, group_size)
    v = weight.values.float()
    lo = torch.zeros(rows * groups).scatter_reduce_(0, group, v, "amin")  # the 0 it starts from: min(w, 0)
    hi = torch.zeros(rows * groups).scatter_reduce_(0, group, v, "amax")
    flat = (lo == 0) & (hi == 0)
    lo = torch.where(flat, torch.full_like(lo, -1), lo)
    hi = torch.where(flat, torch.ones_like(hi), hi)
    scales, zeros = _grid(lo, hi, maxq)
    zero = zeros[group]
    codes = torch.div(v, scales[group]).round_().add_(zero).clamp_(0, maxq)
    codes = torch.where(v == 0, zero, codes)
    dropped = (codes == zero).nonzero().flatten()  # values that de-quantize to 0 leave the mask
    offsets = weight.row_offsets
    if dropped.numel():
        mask, offsets = _clear_values(mask, offsets, dropped, cols)
        keep = torch.ones_like(codes, dtype=torch.bool)
        keep[dropped] = False
        codes = codes[keep]
    lead = weight.shape[:-1]
    result = CompressedWeight("bitmask", weight.shape, pack_codes(codes, bits), mask.reshape(*lead, -1), offsets,
                              scales.reshape(*lead, groups).contiguous(),
                              zeros.reshape(*lead, groups).to(torch.uint8).contiguous(), bits, group_size)
    result.validate()
    return result


def _value_groups(mask: torch.Tensor, offsets: torch.Tensor, cols: int, group_size: int) -> torch.Tensor:
    """[nnz] int64: row * groups + group of every stored value of a bitmask (mask [rows, bytes]), from
    per-group popcounts where groups are whole bytes (no per-value column needed), else from columns."""
    rows, groups = mask.shape[0], -(-cols // group_size)
    if groups == 1:
        return torch.repeat_interleave(torch.arange(rows), offsets[1:] - offsets[:-1])
    if group_size % 8 == 0:
        per_byte = popcount_bytes(mask)  # [rows, bytes] uint8 (its sums are int64)
        pad = groups * (group_size // 8) - per_byte.shape[1]
        per_group = torch.nn.functional.pad(per_byte, (0, pad)).reshape(rows, groups, -1).sum(-1)
        return torch.repeat_interleave(torch.arange(rows * groups), per_group.flatten())
    where = unpack_bits(mask, cols).nonzero()
    return where[:, 0] * groups + torch.div(where[:, 1], group_size, rounding_mode="floor")


def _clear_values(mask: torch.Tensor, offsets: torch.Tensor, dropped: torch.Tensor,
                  cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, row offsets) of a bitmask [rows, bytes] without the stored values numbered `dropped`
    (sorted): each one's column is found among its row's set bits, and its bit cleared."""
    rows = mask.shape[0]
    row = torch.searchsorted(offsets, dropped, right=True) - 1
    rank = dropped - offsets[row]  # the value's place among its row's stored values
    touched, slot = torch.unique(row, return_inverse=True)
    seen = unpack_bits(mask[touched], cols).to(torch.int32).cumsum(1)  # [touched rows, cols], non-decreasing
    stride = cols + 1
    flat = (seen + torch.arange(touched.numel(), dtype=torch.int32)[:, None] * stride).flatten()
    column = torch.searchsorted(flat, (rank + 1 + slot * stride).to(torch.int32)) % cols
    clear = torch.zeros(mask.numel(), dtype=torch.int32)
    clear.scatter_add_(0, row * mask.shape[1] + torch.div(column, 8, rounding_mode="floor"),
                       (1 << (column % 8)).to(torch.int32))  # distinct bits of a byte: their sum is their OR
    mask = mask & ~clear.to(torch.uint8).reshape(mask.shape)
    counts = offsets[1:] - offsets[:-1] - torch.bincount(row, minlength=rows)
    return mask, torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def unpack_bitmask_bits(weight: CompressedWeight) -> torch.Tensor:
    """[R, in] bool: which weights a bitmask stores."""
    return unpack_bits(weight.index.reshape(-1, weight.index.shape[-1]), weight.in_features)


# --- either ---------------------------------------------------------------------------------------

def compress(dense: torch.Tensor, fmt: str = "bitmask", value_dtype: torch.dtype = torch.float16) -> CompressedWeight:
    """Compress an [out, in] or [k, out, in] weight into `fmt` ("bitmask" or "N:M")."""
    if dense.dim() not in (2, 3):
        raise ValueError(f"expected an [out, in] or [k, out, in] weight, got shape {list(dense.shape)}")
    value_dtype = value_dtype_of(value_dtype)
    nm = parse_format(fmt)
    return compress_bitmask(dense, value_dtype) if nm is None else compress_nm(dense, *nm, value_dtype)


def decompress(weight: CompressedWeight) -> torch.Tensor:
    """The dense weight in the value dtype: exactly what was compressed, cast (float32 for quantized
    values: their de-quantized weights)."""
    if weight.quantized:
        return unpack_quantized(weight.format, weight.shape, weight.values, weight.index, weight.scales,
                                weight.zeros, weight.bits, weight.group_size)
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


#: A linear at least this sparse is worth a sparse format: bitmask storage is then <= 0.73x dense in the
#: same dtype, and the kernels read less than a dense matvec does (storage.py and --bits both use it).
COMPRESS_FROM_SPARSITY = 0.3


#: How `fit_grid` places a grid: "minmax" spans each group's [min(w, 0), max(w, 0)]; "mse" clips that
#: range where rounding loses less (see `fit_grid`).
GRID_METHODS = ("minmax", "mse")
DEFAULT_INT4_GROUP = 128  # int4 by round-to-nearest: one grid per 128 columns (per row loses far more)


def default_group_size(bits: int) -> int | None:
    """The group size quantizing takes when given none (`convert`, a quantized LM head of another width):
    per row for int8, 128 columns for int4."""
    return DEFAULT_INT4_GROUP if bits == 4 else None


#: The clipping factors the "mse" search tries on each end of the range: 1.0 (the min/max grid itself,
#: so the search never does worse) down to 0.525 in steps of 0.025.
GRID_SHRINKS = tuple(1.0 - 0.025 * i for i in range(20))
_SEARCH_CHUNK = 1 << 21  # weights a search step holds at once (a few [chunk] float32 temporaries)


def fit_grid(weight: torch.Tensor, bits: int, group_size: int | None = None,
             method: str = "minmax") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) [..., out, groups] float32 of one grid per row (group_size None) or per row's group of
    `group_size` consecutive columns (the last group may be shorter). Either way the grid has 2^bits
    points, `scale` apart, and zero = round(-lo / scale) is an integer code in [0, 2^bits - 1], so 0.0 is
    on every grid (pruned weights stay exactly zero) and the stored format is the same.

    - "minmax": the grid spans [lo, hi] = [min(w, 0), max(w, 0)] (GPTQ's grid).
    - "mse": the same range clipped to [a * lo, b * hi], the factors a, b in GRID_SHRINKS chosen per
      group to minimise the group's squared round-to-nearest error: first one factor for both ends,
      then a for the low end, then b for the high end, each step keeping the best so far. A few
      outliers clipped cost less than a coarse step for every other weight; a = b = 1 is a candidate
      (ties keep it), so the error is never above the min/max grid's. A smaller weight error is not a
      better model: on SmolLM2 int4 it loses more perplexity (BENCHMARKS.md), so "minmax" is the default.
    An all-zero group gets the grid of [-1, 1] (any grid stores zeros exactly)."""
    if method not in GRID_METHODS:
        raise ValueError(f"grid method must be one of {', '.join(GRID_METHODS)}, got {method!r}")
    cols = weight.shape[-1]
    group = cols if group_size is None else group_size
    if group < 1:
        raise ValueError(f"group size must be at least 1, got {group}")
    groups = -(-cols // group)
    w = weight.detach().float()
    if groups * group != cols:
        # pad the last group with its own columns' zeros: a padding 0 changes neither min(w, 0) nor max(w, 0),
        # and rounds to 0 exactly on every grid (no error either)
        w = torch.cat([w, w.new_zeros(*w.shape[:-1], groups * group - cols)], dim=-1)
    w = w.reshape(*w.shape[:-1], groups, group)
    lo = w.amin(dim=-1).clamp(max=0)
    hi = w.amax(dim=-1).clamp(min=0)
    flat = (lo == 0) & (hi == 0)
    lo = torch.where(flat, torch.full_like(lo, -1), lo)
    hi = torch.where(flat, torch.ones_like(hi), hi)
    if method == "mse":
        lo, hi = _clipped_range(w, lo, hi, 2**bits - 1)
    return _grid(lo, hi, 2**bits - 1)


def _grid(lo: torch.Tensor, hi: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    scale = (hi - lo) / maxq
    return scale, torch.round(-lo / scale)


def _rounding_error(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, maxq: int, axis: int,
                    buf: torch.Tensor) -> torch.Tensor:
    """[groups] squared error of each group of w (its weights along `axis`: [groups, group] or
    [group, groups]) rounded onto the grid of [lo, hi], computed as `quantize` rounds (so the grid
    chosen on it is the one stored), in place in `buf` (fresh temporaries cost ~10x: page faults)."""
    scale, zero = _grid(lo, hi, maxq)
    scale, zero = scale.unsqueeze(axis), zero.unsqueeze(axis)
    torch.div(w, scale, out=buf)
    buf.round_().add_(zero).clamp_(0, maxq).sub_(zero).mul_(scale).sub_(w).square_()
    return buf.sum(dim=axis)


def _clipped_range(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, maxq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The "mse" search of `fit_grid` on w [..., groups, group], in chunks of groups (bounded memory).
    Groups under 64 columns are searched transposed ([group, groups]): torch's in-place ops broadcast a
    per-group scale over a short last dimension ~6x slower than over a long one."""
    shape, group = lo.shape, w.shape[-1]
    w, lo, hi = w.reshape(-1, group), lo.reshape(-1), hi.reshape(-1)
    axis = 0 if group < 64 else -1
    step = max(1, _SEARCH_CHUNK // group)
    shrinks = torch.tensor(GRID_SHRINKS, dtype=torch.float32, device=w.device)
    buf = w.new_empty(min(step, w.shape[0]), group)
    buf = buf.T.contiguous() if axis == 0 else buf
    out_lo, out_hi = torch.empty_like(lo), torch.empty_like(hi)
    for start in range(0, w.shape[0], step):
        part = slice(start, start + step)
        chunk = w[part].T.contiguous() if axis == 0 else w[part]
        n = chunk.shape[1] if axis == 0 else chunk.shape[0]
        a, b = _search_chunk(chunk, lo[part], hi[part], shrinks, maxq, axis,
                             buf[:, :n] if axis == 0 else buf[:n])
        out_lo[part], out_hi[part] = lo[part] * a, hi[part] * b
    return out_lo.reshape(shape), out_hi.reshape(shape)


def _search_chunk(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, shrinks: torch.Tensor, maxq: int,
                  axis: int, buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group factors (a, b) for [a * lo, b * hi]: both ends together, then each end alone."""
    def best(pairs) -> torch.Tensor:  # the index of each group's smallest error (the first one on a tie)
        return torch.stack([_rounding_error(w, lo * a, hi * b, maxq, axis, buf) for a, b in pairs]).argmin(dim=0)

    a = b = shrinks[best((s, s) for s in shrinks)]
    a = shrinks[best((s, b) for s in shrinks)]
    b = shrinks[best((a, s) for s in shrinks)]
    return a, b

"""y = x @ W^T with W compressed: one weight, or k stacked experts with one expert per token.

Four backends give the same outputs (within float rounding; all accumulate in fp32):
  - "avx512": the C++ kernels, vectorised for AVX-512 F/BW/VL/VBMI2 (chosen when the CPU has them);
  - "avx2":   the same for AVX2/FMA/F16C;
  - "scalar": the same C++ library, portable loops (other x86, ARM);
  - "torch":  pure torch, decompressing the weight on every call: slow, but needs no compiler.
`SPARSE_EXPANSION_KERNELS` = auto (default) | cpp | avx2 | scalar | torch picks one: auto builds
the C++ library at first use, takes the widest vectors the CPU runs, and falls back to torch with
ONE warning if it cannot build; cpp, avx2 and scalar raise instead (for CI, tests and
benchmarks; avx2 caps the vectors at AVX2); torch never builds. Tensors off the CPU always take
the torch path. It is read once, at the first call (a
decode step makes hundreds of calls); `use_backend` overrides it in code.

int8 / int4 values (formats.py) follow one defined arithmetic (csrc/quant.h): the scalar and AVX-512
C++ kernels give the same bits; "avx2" runs the scalar loops for them; above QUANT_KERNEL_TOKENS
tokens each expert is de-quantized (C++ or torch, the same float32 weights) for torch's GEMM.

Groups of at least `DENSE_FROM` tokens on one expert are multiplied by unpacking that expert to
fp32 and calling torch's GEMM: with that many tokens every weight is reused often enough that
a dense GEMM beats any sparse loop (benchmarks/decode/kernel_speed.py measures the crossover). Inputs
in bfloat16 with bfloat16 values take a bfloat16 GEMM there (AMX / AVX512-BF16 where present).
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Iterator
from types import ModuleType

import torch

from . import build
from .formats import CompressedWeight, decompress

BACKENDS = ("auto", "cpp", "avx2", "scalar", "torch")
_ISA = {"auto": 2, "cpp": 2, "avx2": 1, "scalar": 0}  # widest instruction set each mode may use
_ISA_NAMES = ("scalar", "avx2", "avx512")
DENSE_FROM = 24  # measured crossover, AVX-512 kernels: sparse kernel ahead at 16 tokens, even at 24, GEMM ahead at 32


class KernelFallbackWarning(UserWarning):
    """The C++ kernels are unavailable; the (slower) pure-torch fallback runs instead."""


_override: str | None = None
_warned = False
_resolved: tuple[ModuleType | None, int] | None = None  # what _library() found, until use_backend


def requested_backend() -> str:
    mode = _override or os.environ.get("SPARSE_EXPANSION_KERNELS", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"SPARSE_EXPANSION_KERNELS must be one of {', '.join(BACKENDS)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def use_backend(mode: str) -> Iterator[None]:
    """Run the block with backend `mode` (one of BACKENDS) whatever the environment says."""
    if mode not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {mode!r}")
    global _override, _resolved
    before, _override, _resolved = _override, mode, None
    try:
        yield
    finally:
        _override, _resolved = before, None


def _library() -> tuple[ModuleType | None, int]:
    """(compiled library or None for torch, the instruction set to ask it for); resolved once."""
    global _resolved
    if _resolved is None:
        _resolved = _resolve()
    return _resolved


def _resolve() -> tuple[ModuleType | None, int]:
    global _warned
    mode = requested_backend()
    if mode == "torch":
        return None, 0
    if mode != "auto":
        return build.kernels(retry_failed=True), _ISA[mode]
    try:
        return build.kernels(), _ISA[mode]
    except build.KernelBuildError as error:
        if not _warned:
            _warned = True
            warnings.warn(f"sparse_expansion kernels: {error}; using the slower pure-torch fallback",
                          KernelFallbackWarning, stacklevel=4)
        return None, 0


def backend() -> str:
    """The backend calls run on now: "avx512", "avx2", "scalar" or "torch"."""
    lib, isa = _library()
    if lib is None:
        return "torch"
    return _ISA_NAMES[lib.isa_level(isa)]


def sparse_linear(x: torch.Tensor, weight: CompressedWeight, bias: torch.Tensor | None = None,
                  dense_from: int | None = None) -> torch.Tensor:
    """x [..., in] @ W^T (+ bias) for a compressed [out, in] W; output in x's dtype.

    `dense_from`: tokens from which to unpack W and call a GEMM (default DENSE_FROM; <= 0 never)."""
    if len(weight.shape) != 2:
        raise ValueError(f"sparse_linear takes an [out, in] weight, got {list(weight.shape)}; see expert_linear")
    return _matmul(x, None, weight, bias, 1, DENSE_FROM if dense_from is None else dense_from)


def expert_linear(x: torch.Tensor, labels: torch.Tensor, weight: CompressedWeight,
                  bias: torch.Tensor | None = None, dense_from: int | None = None) -> torch.Tensor:
    """Token i of x [..., in] through expert labels[i] of a compressed [k, out, in] W (+ bias).

    Tokens are grouped by expert; one token is one sparse matvec; an expert with `dense_from` or
    more tokens is unpacked for a GEMM, as in sparse_linear."""
    if len(weight.shape) != 3:
        raise ValueError(f"expert_linear takes a [k, out, in] weight, got {list(weight.shape)}")
    labels = labels.reshape(-1).contiguous()
    return _matmul(x, labels if labels.dtype == torch.int64 else labels.long(), weight, bias, weight.shape[0],
                   DENSE_FROM if dense_from is None else dense_from)


def _matmul(x: torch.Tensor, labels: torch.Tensor | None, weight: CompressedWeight, bias: torch.Tensor | None,
            experts: int, dense_from: int) -> torch.Tensor:
    cols = weight.shape[-1]
    flat = x.reshape(-1, cols)
    if flat.dtype != torch.float32 and flat.dtype != torch.bfloat16:
        flat = flat.float()  # the C++ side takes bfloat16 as it is: its GEMM path runs in bfloat16
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.float()
    lib, isa = _resolved or _library()
    if weight.quantized:
        y = _quantized_matmul(lib, isa, flat, labels, weight, bias)
    elif lib is None or flat.device.type != "cpu":  # the C++ kernels are CPU kernels
        y = _torch_matmul(flat.float(), labels, weight, bias)
    elif weight.row_offsets is not None:
        y = lib.bitmask_matmul(flat.contiguous(), labels, weight.values, weight.index, weight.row_offsets,
                               experts, cols, bias, dense_from, isa)
    else:
        n, m = weight.n_m
        y = lib.nm_matmul(flat.contiguous(), labels, weight.values, weight.index, n, m, experts, cols, bias,
                          dense_from, isa)
    if x.dim() != 2:
        y = y.reshape(*x.shape[:-1], weight.shape[-2])
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _torch_matmul(x: torch.Tensor, labels: torch.Tensor | None, weight: CompressedWeight,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """The fallback: decompress (one expert at a time) and multiply in fp32."""
    if labels is None:
        y = x @ decompress(weight).float().t()
    elif x.shape[0] == 1:
        y = x @ decompress(weight.expert(int(labels[0]))).float().t()
    else:
        y = x.new_empty(x.shape[0], weight.shape[-2])
        for e in labels.unique().tolist():
            rows = (labels == e).nonzero().flatten()
            y[rows] = x[rows] @ decompress(weight.expert(e)).float().t()
    return y if bias is None else y + bias


QUANT_KERNEL_TOKENS = 4  # quantized weights: up to this many tokens run the C++ kernels, more de-quantize + GEMM


def _quantized_matmul(lib: ModuleType | None, isa: int, x: torch.Tensor, labels: torch.Tensor | None,
                      weight: CompressedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """int8 / int4 values: a few tokens on the CPU take the C++ kernels (each weight de-quantized to
    float32 as formats.py says, then float32 products and sums); more tokens de-quantize each expert
    they use in C++ and call torch's GEMM; without the kernels `_torch_matmul` does the same in torch
    (the same de-quantized weights, so the same outputs)."""
    x = x.float()
    if lib is None or not x.is_cpu:
        return _torch_matmul(x, labels, weight, bias)
    if x.shape[0] <= QUANT_KERNEL_TOKENS:
        return lib.quant_matmul(x.contiguous(), labels, weight.format, *_quant_args(weight), bias, isa)
    # Many tokens: each expert de-quantized in C++ (the same float32 values as `decompress`), then a GEMM.
    args = _quant_args(weight)
    if labels is None:
        y = x @ lib.quant_unpack(weight.format, *args, 0).t()
    else:
        y = x.new_empty(x.shape[0], weight.shape[-2])
        for e in labels.unique().tolist():
            rows = (labels == e).nonzero().flatten()
            y[rows] = x[rows] @ lib.quant_unpack(weight.format, *args, e).t()
    return y if bias is None else y + bias


def act8_applies(weight: CompressedWeight) -> bool:
    """Whether `quant_decode_linear` (and the fast decode step) use the act8 arithmetic for this weight
    (csrc/quant.h): int8 / int4 values, dense or bitmask (N:M codes as the bitmask they stand for:
    formats.nm_as_bitmask), groups of 32, a multiple of 64 or the whole row."""
    form = weight.act8_form
    if form is None:
        return False
    return form.groups == 1 or form.group_size == 32 or form.group_size % 64 == 0


def quant_decode_linear(x: torch.Tensor, weight: CompressedWeight, bias: torch.Tensor | None = None,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
    """x [tokens, in] @ W^T (+ bias) for int8 / int4 W in the decode arithmetic the fast step runs: the
    input quantized to int8 in blocks of 32 and dotted with the codes in integers (csrc/quant.h, "act8"),
    where `act8_applies`; otherwise the exact arithmetic of `sparse_linear`. The C++ kernels (AVX-512
    VNNI or scalar, the same bits) or, without them, `act8_reference` (the same integers; its float sums
    in float64, so within float32 rounding of the kernels). float32 out. Token i uses expert labels[i]."""
    if not weight.quantized:
        raise ValueError("quant_decode_linear takes int8 / int4 weights")
    if act8_applies(weight):
        weight = weight.act8_form  # N:M codes run as the bitmask they stand for
    x = x.reshape(-1, weight.in_features).float()
    if bias is not None:
        bias = bias.float()
    lib, isa = _resolved or _library()
    if lib is not None and x.is_cpu:
        lab = None if labels is None else labels.reshape(-1).long().contiguous()
        return lib.quant_decode_matmul(x.contiguous(), lab, weight.format, *_quant_args(weight), bias, isa,
                                       _act8_layout(lib, weight, isa))
    if not act8_applies(weight):
        return _torch_matmul(x, labels, weight, bias)
    rows = []
    for i in range(x.shape[0]):
        w = weight if labels is None else weight.expert(int(labels.reshape(-1)[i]))
        rows.append(act8_reference(x[i], w))
    y = torch.stack(rows)
    return y if bias is None else y + bias


# values tensor id -> (weakref to it, the index and offsets it was built with, their versions, isa, layout)
_act8_layouts: dict[int, tuple] = {}


def _act8_layout(lib: ModuleType, weight: CompressedWeight, isa: int) -> list[torch.Tensor]:
    """The int4 bitmask codes laid out for the act8 vector kernel (csrc/quant.h, Act8Layout), built once
    per weight and kept while its values tensor lives, as the decode step keeps its own; rebuilt when the
    tensors change (in place too: their version counters). [] where the kernel takes none (it then runs
    the scalar loop for int4 bitmask rows)."""
    if weight.format != "bitmask" or weight.bits != 4:
        return []
    values, index, offsets = weight.values, weight.index, weight.row_offsets
    try:
        versions = (values._version, index._version, offsets._version, isa)
    except RuntimeError:  # inference tensors keep no version counter: build it for this call alone
        return lib.act8_layout(weight.format, *_quant_args(weight), isa)
    hit = _act8_layouts.get(id(values))
    if hit is not None and hit[0]() is values and hit[1] is index and hit[2] is offsets and hit[3] == versions:
        return hit[4]
    layout = lib.act8_layout(weight.format, *_quant_args(weight), isa)
    key = id(values)
    ref = weakref.ref(values, lambda _, key=key: _act8_layouts.pop(key, None))
    _act8_layouts[key] = (ref, index, offsets, versions, layout)
    return layout


def act8_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 of the act8 arithmetic for one input [in]: (q int64 [chunks * 64], d float32 [chunks * 2]),
    blocks of 32 columns, zero-padded to a multiple of 64."""
    cols = x.shape[-1]
    chunks = -(-cols // 64)
    padded = torch.zeros(chunks * 64)
    padded[:cols] = x.float()
    blocks = padded.reshape(-1, 32)
    amax = blocks.abs().amax(-1)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv[:, None]).clamp(-127, 127)  # round half to even, as nearbyint
    return q.reshape(-1).long(), amax / 127.0


def act8_reference(x: torch.Tensor, weight: CompressedWeight) -> torch.Tensor:
    """The act8 arithmetic in torch for one token and an [out, in] weight: the same integers as the
    kernels (csrc/quant.h, steps 2-4: the codes' dot products, then the zero points' share once per
    group), the products and sums in float64 (so within float32 rounding of the kernels' bits)."""
    q, d = act8_quantize(x)
    cols, padded = weight.in_features, q.numel()
    grid = torch.arange(padded).clamp(max=cols - 1) // weight.group_size  # the group of every (padded) column
    grid = grid.clamp(max=weight.groups - 1)
    rows = weight.rows
    # codes in column order, the zero point where nothing is stored
    zeros = weight.zeros.reshape(rows, -1).long()[:, grid]
    codes = zeros.clone()
    dense = decompress(weight).reshape(rows, cols)
    scales = weight.scales.reshape(rows, -1).float()
    stored = (dense != 0) if weight.format != "dense" else torch.ones_like(dense, dtype=torch.bool)
    codes[:, :cols] = torch.where(stored, torch.round(dense / scales[:, grid[:cols]]).long() + zeros[:, :cols],
                                  zeros[:, :cols])
    v = (codes * q).reshape(rows, -1, 16, 4).sum(-1)  # [rows, chunks, 16 lanes]: exact integers
    lane_block = torch.arange(padded // 64)[:, None] * 2 + torch.arange(16)[None, :] // 8
    m = (d[lane_block][None] * scales[:, grid[lane_block * 32]]).float()  # rounded to float32, as the kernels
    block_q = q.reshape(-1, 32).sum(-1).double()  # Q_b
    x_g = torch.zeros(weight.groups, dtype=torch.float64).index_add_(0, grid[::32], d.double() * block_q)
    share = (weight.zeros.reshape(rows, -1).double() * scales.double()) @ x_g
    return ((v.double() * m.double()).sum((1, 2)) - share).float()


def _quant_args(weight: CompressedWeight) -> tuple:
    """What the C++ quant entry points take after the format: tensors, then the grid's shape."""
    empty = torch.empty(0, dtype=torch.uint8)
    index = weight.index if weight.index is not None else empty
    offsets = weight.row_offsets if weight.row_offsets is not None else torch.empty(0, dtype=torch.int64)
    n, m = weight.n_m or (0, 0)
    experts = weight.shape[0] if len(weight.shape) == 3 else 1
    return (weight.values, index, offsets, weight.scales, weight.zeros, weight.bits, weight.group_size, n, m,
            experts, weight.in_features)


ROUTE_TOKENS = 4  # up to this many tokens `route` runs in C++ (one call); more go to torch's GEMM


def route(x: torch.Tensor, bias: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """argmin over k of bias + x @ matrix for every row of x [tokens, in] (float32 bias [k], matrix
    [in, k]): a folded router's nearest centroid. Few tokens on the CPU take one C++ call, where
    torch's addmm + argmin cost more in dispatch than in arithmetic; otherwise torch."""
    lib, isa = _resolved or _library()
    if (lib is not None and x.shape[0] <= ROUTE_TOKENS and x.is_cpu and matrix.dtype == torch.float32
            and bias.dtype == torch.float32):
        return lib.route(x if x.is_contiguous() else x.contiguous(), bias, matrix, isa)
    return torch.addmm(bias, x.to(matrix.dtype), matrix).argmin(1)


def unpack(weight: CompressedWeight) -> torch.Tensor:
    """The dense fp32 weight, by the fastest available backend (the GEMM path's first step)."""
    lib, isa = _library()
    if lib is None or weight.values.device.type != "cpu":
        return decompress(weight).float()
    if weight.quantized:
        args = _quant_args(weight)
        return torch.cat([lib.quant_unpack(weight.format, *args, e) for e in range(args[-2])]).reshape(weight.shape)
    if weight.row_offsets is not None:
        dense = lib.bitmask_unpack(weight.values, weight.index, weight.row_offsets, weight.in_features, isa)
    else:
        dense = lib.nm_unpack(weight.values, weight.index, *weight.n_m, weight.in_features, isa)
    return dense.reshape(weight.shape)


def quantize_bitmask(weight: CompressedWeight, bits: int, group_size: int) -> CompressedWeight:
    """formats.quantize_bitmask (round-to-nearest on a min/max grid per row and group, from the stored
    values alone), bit for bit, in one C++ pass where the kernels are built: what `generate` does to a
    float folder on load, where the torch version was most of a 16-expert folder's start-up (BENCHMARKS.md)."""
    from .formats import quantize_bitmask as reference

    lib, _ = _library()
    if lib is None or weight.values.device.type != "cpu" or weight.format != "bitmask" or weight.quantized:
        return reference(weight, bits, group_size)
    rows, lead = weight.rows, weight.shape[:-1]
    packed, mask, offsets, scales, zeros = lib.quantize_bitmask(
        weight.values.float().contiguous(), weight.index.reshape(rows, -1).contiguous(),
        weight.row_offsets.contiguous(), weight.in_features, bits, group_size)
    result = CompressedWeight("bitmask", weight.shape, packed, mask.reshape(*lead, -1), offsets,
                              scales.reshape(*lead, -1), zeros.reshape(*lead, -1), bits, group_size)
    result.validate()
    return result


BF16_DOT_TOKENS = 2  # dense_linear's C++ path: up to this many tokens (decode); more go to torch's GEMM


_bf16_dot: tuple[object, bool] | None = None  # (the _resolved it was read for, the answer)


def bf16_dot_available() -> bool:
    """Whether dense_linear has a C++ path here: the kernels built, AVX-512 allowed, AVX512-BF16 present.
    Asked on every decode call of every dense linear, so the answer is kept until the backend changes."""
    global _bf16_dot
    resolved = _resolved or _library()
    if _bf16_dot is None or _bf16_dot[0] is not resolved:
        lib, isa = resolved
        _bf16_dot = (resolved, lib is not None and isa >= 2 and bool(lib.bf16_dense_supported()))
    return _bf16_dot[1]


def act8_vector_available() -> bool:
    """Whether the act8 kernels (int8 / int4 values at decode) run AVX-512 VNNI code here, not scalar."""
    lib, isa = _resolved or _library()
    return lib is not None and isa >= 2 and bool(lib.act8_vector_supported())


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for a dense weight, with bfloat16 decode steps (1-2 tokens, bfloat16 x and W, CPU, no
    autograd) done by the AVX512-BF16 dot product: torch's bfloat16 matvec reads no faster than its
    float32 one on this CPU, so half-precision weights bought nothing at decode. Everything else is
    F.linear itself."""
    tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if (0 < tokens <= BF16_DOT_TOKENS and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
            and x.is_cpu and weight.is_cpu and not grad and weight.is_contiguous() and bf16_dot_available()):
        lib, _ = _resolved or _library()
        y = lib.dense_bf16_matvec(x.reshape(tokens, -1).contiguous(), weight, bias)
        return y.to(torch.bfloat16).reshape(*x.shape[:-1], weight.shape[0])
    return torch.nn.functional.linear(x, weight, bias)

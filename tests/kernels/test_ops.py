"""Every backend (AVX-512 where the CPU has it, AVX2, scalar C++, pure torch) against a float64 dense reference.

The C++ tests skip only where no compiler exists; where one does, a failed build fails them.
"""

from __future__ import annotations

import pytest
import torch
from helpers import nm_weight, unstructured_weight

from sparse_expansion.kernels import build, ops
from sparse_expansion.kernels import formats as F

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
TOKENS = (1, 2, 3, 5, 8, 13, 40)


@pytest.fixture(scope="session")
def compiled():
    if build.find_compiler() is None:
        pytest.skip("no C++ compiler: only the torch fallback can run here")
    return build.kernels(retry_failed=True)


@pytest.fixture(params=["cpp", "avx2", "scalar", "torch"])
def backend(request):
    if request.param != "torch":
        request.getfixturevalue("compiled")
    with ops.use_backend(request.param):
        yield request.param


def reference(x: torch.Tensor, weight: F.CompressedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x.double() @ F.decompress(weight).double().t()
    return y if bias is None else y + bias.double()


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 accumulation in any order: relative to the size of the terms summed."""
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert (y.double() - ref).abs().max().item() <= 1e-5 * (1 + ref.abs().max().item())


def weights(fmt: str, out: int, cols: int, seed: int) -> torch.Tensor:
    if fmt == "bitmask":
        return unstructured_weight((out, cols), 0.35, seed)
    n, m = F.parse_format(fmt)
    return nm_weight((out, cols), n, m, seed)


SHAPES = {  # (out, in): odd sizes, a partial last mask byte, N:M rows whose value count is not a multiple of 8
    "bitmask": [(37, 53), (8, 8), (3, 1), (64, 576), (19, 300)],
    "2:4": [(37, 20), (16, 64), (5, 36)],
    "4:8": [(37, 24), (9, 64)],
    "1:4": [(11, 64), (7, 20)],  # window of 32 inputs: the gather path
    "2:8": [(11, 64)],
    "8:16": [(6, 48)],
    "1:2": [(6, 34)],
    "3:8": [(6, 40)],  # N not dividing 8: the scalar kernel even under AVX2
}


@pytest.mark.parametrize("fmt", list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_dense(backend, fmt, dtype):
    for i, (out, cols) in enumerate(SHAPES[fmt]):
        weight = F.compress(weights(fmt, out, cols, i), fmt, dtype)
        bias = torch.randn(out) if i % 2 else None
        for tokens in TOKENS:
            x = torch.randn(tokens, cols)
            assert_close(ops.sparse_linear(x, weight, bias), reference(x, weight, bias))


@pytest.mark.parametrize("fmt", ["bitmask", "2:4", "4:8"])
def test_large_groups_use_gemm_with_same_result(backend, fmt):
    weight = F.compress(weights(fmt, 40, 64, 3), fmt, torch.float16)
    x = torch.randn(70, 64)
    assert_close(ops.sparse_linear(x, weight), reference(x, weight))  # 70 >= DENSE_FROM: unpack + GEMM


@pytest.mark.parametrize("fmt", ["bitmask", "2:4", "1:4"])
@pytest.mark.parametrize("dense_from", [0, 3])
def test_routed_experts_match_per_token_reference(backend, fmt, dense_from):
    k, out, cols = 5, 23, 32
    stacked = torch.stack([weights(fmt, out, cols, e) for e in range(k)])
    stacked[3] = 0.0  # an expert with no weights at all
    weight = F.compress(stacked, fmt, torch.bfloat16)
    bias = torch.randn(out)
    dense = F.decompress(weight).double()
    for tokens in (1, 2, 9, 31):
        x = torch.randn(tokens, cols)
        labels = torch.randint(0, k, (tokens,), generator=torch.Generator().manual_seed(tokens))
        labels[0] = 3
        want = torch.stack([dense[e] @ row for row, e in zip(x.double(), labels.tolist())]) + bias.double()
        assert_close(ops.expert_linear(x, labels, weight, bias, dense_from=dense_from), want)


def test_half_inputs_come_back_in_their_dtype(backend):
    weight = F.compress(weights("bitmask", 9, 16, 0), "bitmask", torch.float16)
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    y = ops.sparse_linear(x, weight)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 9)
    want = reference(x.reshape(-1, 16).float(), weight).reshape(2, 3, 9)
    assert (y.double() - want).abs().max() < 0.05 * (1 + want.abs().max())


def test_no_tokens(backend):
    weight = F.compress(weights("2:4", 9, 16, 0), "2:4", torch.float32)
    assert ops.sparse_linear(torch.zeros(0, 16), weight).shape == (0, 9)


def test_bad_labels_raise(compiled):
    weight = F.compress(torch.stack([weights("bitmask", 4, 16, e) for e in range(2)]), "bitmask", torch.float32)
    with ops.use_backend("cpp"), pytest.raises(RuntimeError, match="not an expert"):
        ops.expert_linear(torch.randn(3, 16), torch.tensor([0, 2, 1]), weight)


@pytest.mark.parametrize("fmt", ["bitmask", "2:4", "4:8", "8:16", "1:4"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("isa", [1, 2])
def test_scalar_equals_vector_kernels(compiled, fmt, dtype, isa):
    if compiled.isa_level(isa) != isa:
        pytest.skip(f"this CPU has no {('AVX2/FMA/F16C', 'AVX-512 F/BW/VL/VBMI2')[isa - 1]}")
    weight = F.compress(weights(fmt, 50, 96, 1), fmt, dtype)
    x = torch.randn(11, 96)
    with ops.use_backend("cpp" if isa == 2 else "avx2"):
        assert ops.backend() == ("avx512" if isa == 2 else "avx2")
        fast = ops.sparse_linear(x, weight)
    with ops.use_backend("scalar"):
        slow = ops.sparse_linear(x, weight)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 16, 17, 40, 64, 70])
def test_router_scores_are_summed_in_input_order_on_every_path(compiled, k):
    """A folded router's scores are bias + x_0 m_0 + x_1 m_1 + ..., each product rounded, then added in
    input order, on the portable and the AVX-512 path alike (the decode step scores with the same kernel,
    so a module and the step pick the same expert); labels are their argmin, a tie to the lowest."""
    g = torch.Generator().manual_seed(k)
    x, bias, matrix = torch.randn(3, 37, generator=g), torch.randn(k, generator=g), torch.randn(37, k, generator=g)
    if k > 1:  # columns 0 and 1 tie, below every other
        matrix[:, 1] = matrix[:, 0]
        bias[:2] = -1e3
    expected = bias.expand(3, k).clone()
    for i in range(37):
        expected = expected + x[:, i:i + 1] * matrix[i]
    for isa in sorted({0, compiled.isa_level(2)}):
        assert torch.equal(compiled.route_scores(x, bias, matrix, isa), expected)
        labels = compiled.route(x, bias, matrix, isa)
        assert torch.equal(labels, expected.argmin(1)) and (k == 1 or labels.eq(0).all())


def test_unpack_matches_decompress(backend):
    for fmt in ("bitmask", "2:4", "4:8", "1:4", "3:8"):  # 24 inputs: N:M rows with leftover values
        weight = F.compress(torch.stack([weights(fmt, 7, 24, e) for e in range(3)]), fmt, torch.bfloat16)
        assert torch.equal(ops.unpack(weight), F.decompress(weight).float())


def test_threads_give_the_same_answer(compiled):
    weight = F.compress(weights("bitmask", 300, 64, 0), "bitmask", torch.float16)
    x = torch.randn(3, 64)
    before = torch.get_num_threads()
    with ops.use_backend("cpp"):
        try:
            torch.set_num_threads(1)
            one = ops.sparse_linear(x, weight)
            torch.set_num_threads(2)
            two = ops.sparse_linear(x, weight)
        finally:
            torch.set_num_threads(before)
    assert torch.equal(one, two)  # rows are split between threads, never a row's sum


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_bfloat16_inputs_take_a_bfloat16_gemm_for_big_groups(backend, fmt):
    """bf16 inputs and bf16 values: from 64 tokens on one expert the GEMM runs in bf16 (its outputs
    rounded to bf16 once); fewer tokens and other value dtypes as before."""
    weight = F.compress(torch.stack([weights(fmt, 40, 64, e) for e in range(2)]), fmt, torch.bfloat16)
    x = torch.randn(150, 64).bfloat16()
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(50, dtype=torch.long)])[torch.randperm(150)]
    y = ops.expert_linear(x, labels, weight)
    assert y.dtype == torch.bfloat16 and y.shape == (150, 40)
    dense = F.decompress(weight).double()
    want = torch.einsum("toi,ti->to", dense[labels], x.double())
    assert (y.double() - want).abs().max() <= 2 ** -7 * (1 + want.abs().max())  # bf16 rounding of outputs


@pytest.mark.parametrize("shape", SHAPES["bitmask"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_bfloat16_inputs_and_values(backend, shape, tokens):
    """bf16 inputs with bf16 values: on AVX512-BF16 CPUs the dot-product kernel, 32 columns a step
    (partial last steps: `in` of 53, 300, 1)."""
    weight = F.compress(weights("bitmask", *shape, 7), "bitmask", torch.bfloat16)
    x = torch.randn(tokens, shape[1]).bfloat16()
    y = ops.sparse_linear(x, weight, dense_from=0)  # never the GEMM path
    ref = reference(x.float(), weight)
    assert y.dtype == torch.bfloat16
    assert (y.double() - ref).abs().max().item() <= 2 ** -7 * (1 + ref.abs().max().item())
    if backend == "cpp":  # the kernel's float32 outputs, before the final rounding to bf16
        lib, isa = ops._library()
        raw = lib.bitmask_matmul(x, None, weight.values, weight.index, weight.row_offsets, 1, shape[1], None, 0, isa)
        assert_close(raw, ref)


@pytest.mark.parametrize("fmt,shape", [(fmt, shape) for fmt, shapes in SHAPES.items() for shape in shapes])
def test_one_bfloat16_weight_over_many_tokens_is_torchs_bfloat16_gemm(backend, fmt, shape):
    """A prompt through one bf16 weight (no router): torch's bf16 GEMM of the decompressed weight, bit for
    bit, returned without a float32 detour; with a bias, that GEMM's float32 output plus the bias, rounded."""
    weight = F.compress(weights(fmt, *shape, 3), fmt, torch.bfloat16)
    x = torch.randn(2, 50, shape[1]).bfloat16()
    bias = torch.randn(shape[0])
    dense = F.decompress(weight).bfloat16()
    gemm = x.reshape(-1, shape[1]) @ dense.t()
    y = ops.sparse_linear(x, weight, dense_from=24)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 50, shape[0])
    with_bias = ops.sparse_linear(x, weight, bias, dense_from=24)
    if backend in ("cpp", "avx2", "scalar") and (fmt != "bitmask" or ops.bf16_dot_available()):
        assert torch.equal(y.reshape(-1, shape[0]), gemm)
        assert torch.equal(with_bias.reshape(-1, shape[0]), (gemm.float() + bias).bfloat16())
    else:  # decompressed to float32 and multiplied there
        ref = reference(x.reshape(-1, shape[1]).float(), weight, bias)
        assert (with_bias.reshape(-1, shape[0]).double() - ref).abs().max() <= 2 ** -7 * (1 + ref.abs().max())


@pytest.mark.parametrize("fmt,shape", [(fmt, shape) for fmt, shapes in SHAPES.items() for shape in shapes])
def test_bfloat16_groups_below_64_tokens_unpack_straight_to_bfloat16(backend, fmt, shape):
    """A group of 24-63 tokens takes the GEMM; with bf16 inputs and values the values are unpacked
    straight into a bf16 weight (exactly: the same bits; bitmask on AVX512-BF16 CPUs, N:M on any), so
    the output is torch's own bf16 GEMM of the decompressed weight, bit for bit."""
    weight = F.compress(torch.stack([weights(fmt, *shape, e) for e in range(2)]), fmt, torch.bfloat16)
    x = torch.randn(40, shape[1]).bfloat16()
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    y = ops.expert_linear(x, labels, weight, dense_from=24)
    dense = F.decompress(weight)
    ref = torch.einsum("toi,ti->to", dense[labels].double(), x.double())
    assert y.dtype == torch.bfloat16
    assert (y.double() - ref).abs().max() <= 2 ** -7 * (1 + ref.abs().max())
    if backend in ("cpp", "avx2", "scalar") and (fmt != "bitmask" or ops.bf16_dot_available()):
        assert torch.equal(y[:30], (x[:30] @ dense[0].bfloat16().t()))


@pytest.mark.parametrize("fmt,shape", [("bitmask", (37, 53)), ("bitmask", (64, 576)), ("2:4", (37, 20)),
                                       ("4:8", (9, 64))])
def test_routed_bfloat16_tokens_come_out_in_bfloat16_as_before(backend, fmt, shape):
    """Routed bf16 tokens over bf16 experts, groups of every kind (one of 30 tokens: a GEMM; one of 5 and one
    of 1: the sparse kernel; one empty), no bias: the bf16 output holds each GEMM group's torch bf16 GEMM and
    each small group's float32 kernel output rounded once, the bits the float32 route gave (a zero bias
    keeps that route)."""
    experts = torch.stack([weights(fmt, *shape, e) for e in range(4)])
    weight = F.compress(experts, fmt, torch.bfloat16)
    labels = torch.cat([torch.full((30,), 2), torch.full((5,), 0), torch.full((1,), 3)])
    labels = labels[torch.randperm(36, generator=torch.Generator().manual_seed(0))]
    x = torch.randn(36, shape[1], generator=torch.Generator().manual_seed(1)).bfloat16()
    y = ops.expert_linear(x, labels, weight, dense_from=24)
    assert y.dtype == torch.bfloat16 and y.shape == (36, shape[0])
    assert torch.equal(y, ops.expert_linear(x, labels, weight, torch.zeros(shape[0]), dense_from=24))
    big, few = labels == 2, labels != 2
    sparse_only = ops.expert_linear(x[few], labels[few], weight, dense_from=10**6)  # the float32 kernel
    assert torch.equal(y[few], sparse_only)
    if backend in ("cpp", "avx2", "scalar") and (fmt != "bitmask" or ops.bf16_dot_available()):
        assert torch.equal(y[big], x[big] @ F.decompress(weight).bfloat16()[2].t())

"""int8 / int4 values in the compressed formats: exact layouts and grids, every kernel path against the
de-quantized reference (the C++ paths bit for bit against each other and against quant.h's order,
emulated here), modules that save and load."""

from __future__ import annotations

import pytest
import torch
from helpers import nm_weight, unstructured_weight
from safetensors.torch import load_file, save_file

from sparse_expansion.kernels import CompressedExperts, CompressedLinear, QuantizedLinear, build, ops
from sparse_expansion.kernels import formats as F
from sparse_expansion.kernels.linear import quantized_copy
from sparse_expansion.prune.quantize import GroupQuantizer, RowQuantizer, fit_grid, round_to_grid


@pytest.fixture(scope="module")
def compiled():
    if build.find_compiler() is None:
        pytest.skip("no C++ compiler: only the torch fallback can run here")
    return build.kernels(retry_failed=True)


def weight_for(fmt: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    if fmt == "bitmask":
        return unstructured_weight(shape, 0.35, seed)
    if fmt == "dense":
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        w[..., 1, :] = 0.0  # an all-zero row
        return w
    return nm_weight(shape, *F.parse_format(fmt), seed)


def quantized(fmt: str, shape: tuple[int, ...], bits: int, group: int | None, seed: int = 0) -> F.CompressedWeight:
    w = weight_for(fmt, shape, seed)
    g = shape[-1] if group is None else group
    scales, zeros = fit_grid(w, bits, g)
    return F.quantize(w, fmt, bits, g, scales, zeros)


# ------------------------------------------------------------------------------------ layouts, grids


def test_int4_codes_are_packed_low_nibble_first_and_dequantize_as_documented():
    w = torch.tensor([[0.0, 3.0, -1.0, 0.0, 2.0]])  # bitmask keeps columns 1, 2, 4
    scales, zeros = torch.tensor([[1.0]]), torch.tensor([[5.0]])
    q = F.quantize(w, "bitmask", 4, 5, scales, zeros)
    # codes: 3 + 5 = 8, -1 + 5 = 4, 2 + 5 = 7 -> bytes 0x48, 0x07
    assert q.values.tolist() == [0x48, 0x07]
    assert q.index.tolist() == [[0b10110]] and q.row_offsets.tolist() == [0, 3]
    assert q.zeros.dtype == torch.uint8 and q.zeros.tolist() == [[5]]
    assert torch.equal(F.decompress(q), w)
    q8 = F.quantize(w, "dense", 8, 5, scales, zeros)
    assert q8.values.tolist() == [[5, 8, 4, 5, 7]]


@pytest.mark.parametrize("fmt", ["bitmask", "dense", "2:4", "4:8"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32, 7])
def test_weights_on_the_grid_come_back_bit_for_bit(fmt, bits, group):
    w = weight_for(fmt, (3, 11, 72))
    g = 72 if group is None else group
    scales, zeros = fit_grid(w, bits, g)
    on_grid = round_to_grid(w, scales[..., F.group_columns(72, g)], zeros[..., F.group_columns(72, g)], bits)
    on_grid = torch.where(w == 0, 0.0, on_grid)
    q = F.quantize(on_grid, fmt, bits, g, scales, zeros, exact=True)
    assert torch.equal(F.decompress(q), on_grid)
    assert q.spec()["value_dtype"] == f"int{bits}" and q.spec()["group_size"] == g
    for e in range(3):  # an int4 bitmask expert may start mid-byte: its codes are re-packed
        assert torch.equal(F.decompress(q.expert(e)), on_grid[e])
    with pytest.raises(ValueError, match="not on the given"):
        F.quantize(on_grid + 1e-3 * (on_grid != 0), fmt, bits, g, scales, zeros, exact=True)


def test_fit_grid_per_row_is_gptqs_per_channel_grid_and_groups_are_their_own_rows():
    w = torch.randn(6, 40)
    w[2] = 0.0
    old = RowQuantizer.fit(w, 4)
    scale, zero = fit_grid(w, 4)
    assert torch.equal(scale, old.scale) and torch.equal(zero, old.zero)
    scale, zero = fit_grid(w, 4, 16)  # groups of 16, 16, 8 columns
    for g, cols in enumerate([slice(0, 16), slice(16, 32), slice(32, 40)]):
        want_scale, want_zero = fit_grid(w[:, cols], 4)
        assert torch.equal(scale[:, g:g + 1], want_scale) and torch.equal(zero[:, g:g + 1], want_zero)
    assert torch.equal(scale[2], torch.full((3,), 2.0) / 15)  # an all-zero row gets the grid of [-1, 1]


def test_validation_catches_inconsistent_grids():
    q = quantized("bitmask", (8, 40), 4, 16)
    F.CompressedWeight.from_tensors("bitmask", (8, 40), q.tensors(), 4, 16)
    bad = dict(q.tensors(), zeros=torch.full_like(q.zeros, 16))
    with pytest.raises(ValueError, match="below 2"):
        F.CompressedWeight.from_tensors("bitmask", (8, 40), bad, 4, 16)
    with pytest.raises(ValueError, match="scales must be"):
        F.CompressedWeight.from_tensors("bitmask", (8, 40), dict(q.tensors(), scales=q.scales[:, :1]), 4, 16)
    with pytest.raises(ValueError, match="offsets say"):
        F.CompressedWeight.from_tensors("bitmask", (8, 40), dict(q.tensors(), values=q.values[:-1]), 4, 16)


# --------------------------------------------------------------------------------------- kernels


def canonical_matvec(x: torch.Tensor, weight: F.CompressedWeight) -> torch.Tensor:
    """quant.h's arithmetic in plain Python floats rounded through float32 tensors: de-quantized value
    times input, added into partial sum (column or N:M value index) mod 16, then the fixed tree."""
    dense = F.decompress(weight).reshape(-1, weight.in_features)
    rows = dense.shape[0]
    if weight.n_m is None:
        stored = torch.ones_like(dense, dtype=torch.bool) if weight.format == "dense" else F.unpack_bitmask_bits(weight)
        cols = [stored[r].nonzero().flatten().tolist() for r in range(rows)]
        lanes = [[c % 16 for c in row] for row in cols]
    else:
        cols = F.nm_columns(weight).tolist()
        lanes = [[j % 16 for j in range(len(row))] for row in cols]
    out = torch.empty(rows)
    for r in range(rows):
        s = torch.zeros(16)
        for c, lane in zip(cols[r], lanes[r]):
            s[lane] = s[lane] + dense[r, c] * x[c]
        s = s[:8] + s[8:]
        s = s[:4] + s[4:]
        s = s[:2] + s[2:]
        out[r] = s[0] + s[1]
    return out


SHAPES = {  # odd in_features (not a multiple of 8, 16, 32 or the group), all-zero rows
    "bitmask": [(2, 9, 53), (1, 5, 300), (2, 4, 7)],
    "dense": [(2, 9, 53), (1, 4, 70)],
    "2:4": [(2, 9, 36), (1, 5, 96)],
    "4:8": [(2, 7, 72)],
    "1:4": [(1, 5, 20)],
}
CASES = [(fmt, shape) for fmt, shapes in SHAPES.items() for shape in shapes]


@pytest.mark.parametrize("fmt,shape", CASES, ids=[f"{f}-{'x'.join(map(str, s))}" for f, s in CASES])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32, 16, 7])
def test_every_path_against_the_dequantized_reference(compiled, fmt, shape, bits, group):
    weight = quantized(fmt, shape, bits, group, seed=shape[-1])
    dense = F.decompress(weight)
    g = torch.Generator().manual_seed(1)
    for tokens in (1, 3, ops.QUANT_KERNEL_TOKENS + 3):  # C++ for a few tokens, de-quantize + GEMM for more
        x = torch.randn(tokens, shape[-1], generator=g)
        labels = torch.randint(0, shape[0], (tokens,), generator=g)
        bias = torch.randn(shape[1], generator=g)
        want = torch.stack([dense[labels[i]].double() @ x[i].double() for i in range(tokens)]) + bias.double()
        outputs = {}
        for mode in ("cpp", "scalar", "torch"):
            with ops.use_backend(mode):
                outputs[mode] = ops.expert_linear(x, labels, weight, bias)
            y = outputs[mode]
            assert y.dtype == torch.float32
            assert (y.double() - want).abs().max().item() <= 1e-5 * (1 + want.abs().max().item()), mode
        assert torch.equal(outputs["cpp"], outputs["scalar"])  # AVX-512 (where present) == scalar, bit for bit
        if tokens > ops.QUANT_KERNEL_TOKENS:  # C++ de-quantizes to torch's very weights: the same GEMM
            assert torch.equal(outputs["cpp"], outputs["torch"])
        if tokens <= ops.QUANT_KERNEL_TOKENS:
            for i in range(tokens):  # and both follow quant.h's order exactly
                expert = weight.expert(int(labels[i]))
                assert torch.equal(outputs["scalar"][i], canonical_matvec(x[i], expert) + bias)


@pytest.mark.parametrize("fmt,shape", CASES[::2], ids=[f"{f}-{'x'.join(map(str, s))}" for f, s in CASES[::2]])
@pytest.mark.parametrize("bits", [8, 4])
def test_cpp_unpack_is_decompress(compiled, fmt, shape, bits):
    weight = quantized(fmt, shape, bits, 16, seed=3)
    with ops.use_backend("cpp"):
        assert torch.equal(ops.unpack(weight), F.decompress(weight))


def test_one_weight_without_labels_and_bf16_inputs(compiled):
    weight = quantized("bitmask", (24, 100), 4, 32)
    x = torch.randn(2, 100)
    with ops.use_backend("cpp"):
        y = ops.sparse_linear(x, weight)
        y16 = ops.sparse_linear(x.bfloat16(), weight)
    assert torch.equal(y, canonical_matvec_rows(x, weight))
    assert y16.dtype == torch.bfloat16
    assert torch.equal(y16, canonical_matvec_rows(x.bfloat16().float(), weight).bfloat16())


def canonical_matvec_rows(x: torch.Tensor, weight: F.CompressedWeight) -> torch.Tensor:
    return torch.stack([canonical_matvec(row, weight) for row in x])


# --------------------------------------------------------------------------------------- modules


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_linear_saves_and_loads_to_identical_outputs(tmp_path, bits):
    torch.manual_seed(0)
    module = QuantizedLinear.quantize(torch.randn(10, 45), torch.randn(10), bits, 16)
    assert set(module.state_dict()) == {"values", "scales", "zeros", "bias"}
    spec = module.spec()
    assert spec == {"in_features": 45, "out_features": 10, "value_dtype": f"int{bits}", "group_size": 16,
                    "bias": True}
    save_file(module.state_dict(), tmp_path / "w.safetensors")
    loaded = QuantizedLinear.from_spec(spec)
    loaded.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    x = torch.randn(3, 45)
    assert torch.equal(loaded(x), module(x))
    reference = x @ F.decompress(module.compressed()).t() + module.bias
    torch.testing.assert_close(module(x), reference, rtol=1e-5, atol=1e-5)
    bad = module.state_dict()
    bad["zeros"] = torch.full_like(bad["zeros"], 255) if bits == 4 else bad["zeros"][:, :1].contiguous()
    with pytest.raises((ValueError, RuntimeError)):
        QuantizedLinear.from_spec(spec).load_state_dict(bad, strict=True)


@pytest.mark.parametrize("bits,group,grid", [(8, None, "minmax"), (4, 16, "minmax"), (4, 7, "mse"), (8, 32, "mse")])
def test_quantizing_a_linear_a_slice_of_rows_at_a_time_gives_the_same_codes(monkeypatch, bits, group, grid):
    """Rows have their own grids, so rounding a big weight (an LM head) a few rows at a time, to bound its
    float32 temporaries, stores exactly what rounding it whole does."""
    from sparse_expansion.kernels import linear

    weight = torch.randn(37, 45, generator=torch.Generator().manual_seed(1)).bfloat16()
    whole = QuantizedLinear.quantize(weight, None, bits, group, grid)
    monkeypatch.setattr(linear, "QUANTIZE_VALUES", 5 * 45)  # 5 rows a slice, the last one 2
    sliced = QuantizedLinear.quantize(weight, None, bits, group, grid)
    assert whole.state_dict().keys() == sliced.state_dict().keys()
    assert all(torch.equal(whole.state_dict()[k], sliced.state_dict()[k]) for k in whole.state_dict())
    assert sliced.spec() == whole.spec()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32, 7, 500])
@pytest.mark.parametrize("shape", [(13, 96), (3, 9, 53)])
def test_quantizing_bitmask_values_equals_the_dense_detour(bits, group, shape):
    """quantize_bitmask (no dense copy) stores what fit_grid + quantize of the dense weight store, bit for
    bit: all-zero rows, odd group tails, stored zeros and values that round to the zero point included."""
    w = unstructured_weight(shape, 0.35, seed=shape[-1] + bits)
    w[..., 1, :] = 0.0  # an all-zero row
    w = torch.where(w.abs() < 0.2, torch.zeros_like(w), w)  # nothing rounds to the zero point: the same mask
    tiny = w.clone()
    tiny[..., 2, :5] = 1e-6  # rounds to the zero point: leaves the mask
    for dtype, dense_in in ((torch.float32, w), (torch.float32, tiny), (torch.bfloat16, tiny)):
        weight = F.compress(dense_in, "bitmask", dtype)
        g = shape[-1] if group is None else min(group, shape[-1])
        dense = F.decompress(weight).float()
        want = F.quantize(dense, "bitmask", bits, g, *fit_grid(dense, bits, g))
        for backend in ("auto", "torch"):  # ops': the C++ pass where the kernels build, else this function
            with ops.use_backend(backend):
                fast = ops.quantize_bitmask(weight, bits, g)
            for got in (F.quantize_bitmask(weight, bits, g), fast):
                assert got.tensors().keys() == want.tensors().keys()
                for name, tensor in want.tensors().items():
                    assert torch.equal(got.tensors()[name], tensor), name
                assert (got.bits, got.group_size, got.shape) == (want.bits, want.group_size, want.shape)


@pytest.mark.parametrize("kind", ["bitmask", "2:4"])
def test_compressed_modules_quantize_and_reload(tmp_path, kind):
    w = weight_for("bitmask" if kind == "bitmask" else kind, (3, 12, 64))
    experts = quantized_copy(CompressedExperts.from_dense(w, torch.randn(12), torch.float32), 4, 32)
    linear = quantized_copy(CompressedLinear.from_dense(w[0], None, torch.float32), 8)
    for module in (experts, linear):
        assert module.format == kind and module.bits in (4, 8)
        state = module.state_dict()
        save_file(state, tmp_path / "m.safetensors")
        loaded = type(module).from_spec(module.spec())
        loaded.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
        x = torch.randn(5, 64)
        args = (torch.tensor([0, 2, 1, 2, 2]),) if module is experts else ()
        assert torch.equal(loaded(x, *args), module(x, *args))
    assert experts.expert_nonzeros() == [int((F.decompress(experts.compressed())[e] != 0).sum()) for e in range(3)]


def test_group_quantizer_fits_each_group_when_the_solve_reaches_it():
    w = torch.randn(2, 4, 64)
    q = GroupQuantizer(w, 4, 32)
    assert q.scale.shape == (2, 4, 2) and q.starts_group(32) and not q.starts_group(31)
    q.fit_group(32, w[..., 32:])
    want_scale, _ = fit_grid(w[..., 32:], 4)
    assert torch.equal(q.scale[..., 1], want_scale[..., 0])
    column = q(w[..., 40], 40)
    assert torch.equal(column, round_to_grid(w[..., 40], q.scale[..., 1], q.zero[..., 1], 4))


# ------------------------------------------------------------------- the decode arithmetic (act8)

# odd widths, a tail chunk, all-zero row 1; 19 rows: four-row passes that prefetch the next four, and three left over;
# 21 x 256: rows without a tail chunk
ACT8_SHAPES = [(2, 9, 53), (1, 5, 300), (2, 4, 7), (1, 6, 130), (1, 19, 300), (1, 21, 256)]


def act8_bound(x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """sum_j |w_j| d_b(j) / 2: how far rounding the input to int8 in blocks of 32 can move W x."""
    _, d = ops.act8_quantize(x)
    return (dense.double().abs() * d.repeat_interleave(32)[: x.numel()].double() / 2).sum(-1)


@pytest.mark.parametrize("fmt", ["dense", "bitmask"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32, 64, 128])
def test_act8_kernels_agree_and_stay_within_the_input_rounding(compiled, fmt, bits, group):
    """AVX-512 VNNI == scalar bit for bit; the torch version within float32 rounding; each against the
    exact de-quantized product within the bound the input's rounding allows; an all-zero row exactly 0
    where a bitmask stores nothing, else within float32 rounding of its zero points' share (its grid is
    [-1, 1], z s ~ 1, so that share is ~ sum |x|)."""
    for shape in ACT8_SHAPES:
        weight = quantized(fmt, shape, bits, group, seed=shape[-1])
        assert ops.act8_applies(weight)
        for x, out in act8_outputs_agree(weight, seed=2):
            if fmt == "bitmask":
                assert (out[:, 1] == 0).all()
            else:
                assert (out[:, 1].abs() <= 1e-6 * (1 + x.abs().sum(-1))).all()


def act8_outputs_agree(weight: F.CompressedWeight, seed: int, same_as: F.CompressedWeight | None = None):
    """Runs quant_decode_linear on 1 and 3 tokens by every backend and checks: C++ == scalar bit for bit
    (and == `same_as` run the same way), torch within float32 rounding, each row within the bound the
    input's rounding allows of the exact product. Yields the inputs and the C++ outputs."""
    shape, dense = weight.shape, F.decompress(weight)
    g = torch.Generator().manual_seed(seed)
    for tokens in (1, 3):
        x = torch.randn(tokens, shape[-1], generator=g) * torch.linspace(0.1, 4, shape[-1])  # blocks differ
        labels = torch.randint(0, shape[0], (tokens,), generator=g)
        out = {}
        for mode in ("cpp", "scalar", "torch"):
            with ops.use_backend(mode):
                out[mode] = ops.quant_decode_linear(x, weight, labels=labels)
        assert torch.equal(out["cpp"], out["scalar"])
        if same_as is not None:
            assert torch.equal(out["cpp"], ops.quant_decode_linear(x, same_as, labels=labels))
        assert (out["torch"] - out["cpp"]).abs().max() <= 1e-5 * (1 + out["cpp"].abs().max())
        for i in range(tokens):
            exact = dense[labels[i]].double() @ x[i].double()
            # float32 rounding of the product, and of the zero points' share taken back (quant.h step 4: each
            # column's code counts its zero point, z s ~ 1 on these grids, so that share is ~ sum |x|)
            row, xi = dense[labels[i]].double(), x[i].double()
            slack = 1e-5 * (1 + row.abs() @ xi.abs()) + 1e-6 * xi.abs().sum()
            assert ((out["cpp"][i].double() - exact).abs() <= act8_bound(x[i], dense[labels[i]]) + slack).all()
        yield x, out["cpp"]


def test_act8_rounds_the_input_in_blocks_of_32():
    x = torch.cat([torch.linspace(-2, 1, 32), torch.zeros(32), torch.tensor([0.5, -0.25, 0.125])])
    q, d = ops.act8_quantize(x)
    assert q.numel() == 128 and d.numel() == 4  # two chunks of 64 columns, zero-padded
    assert q[0] == -127 and d[0] == pytest.approx(2 / 127)  # each block's largest magnitude is 127
    assert (q[32:64] == 0).all() and d[1] == 0  # an all-zero block
    assert q[64:67].tolist() == [127, -64, 32] and (q[67:] == 0).all()  # -63.5 rounds to even


@pytest.mark.parametrize("fmt,group,bits,width", [("1:4", None, 4, 100), ("dense", 16, 8, 96), ("bitmask", 7, 8, 96)])
def test_act8_leaves_other_weights_to_the_exact_kernels(compiled, fmt, group, bits, width):
    """Group sizes act8 does not lay out, and int4 N:M rows that end mid-byte (no bitmask view), run
    quant_matmul's exact arithmetic."""
    weight = quantized(fmt, (1, 5, width), bits, group).expert(0)
    assert not ops.act8_applies(weight)
    x = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ops.quant_decode_linear(x, weight), ops.sparse_linear(x, weight))


@pytest.mark.parametrize("fmt", ["2:4", "4:8"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [None, 32])
def test_act8_runs_nm_codes_as_the_bitmask_they_stand_for(compiled, fmt, bits, group):
    """A quantized N:M weight's bitmask view shares its codes and stands for the same weight; act8 runs
    it (C++ == scalar bit for bit, torch within float32 rounding, within the input-rounding bound)."""
    for shape in [(2, 9, 64), (1, 5, 320), (3, 4, 136)]:
        weight = quantized(fmt, shape, bits, group, seed=shape[-1])
        view = F.nm_as_bitmask(weight)
        assert view.format == "bitmask" and view.values.data_ptr() == weight.values.data_ptr()
        assert torch.equal(F.decompress(view), F.decompress(weight))
        assert ops.act8_applies(weight) and weight.act8_form is weight.act8_form  # built once
        assert len(list(act8_outputs_agree(weight, seed=3, same_as=view))) == 2


def expected_act8_layout(weight: F.CompressedWeight) -> tuple[list[int], list[int]]:
    """quant.h's Act8Layout written out in Python: each row's 64-column chunks in order, a chunk's codes
    from a fresh byte (two a byte, low nibble first, an odd count padded with a zero nibble), 32 zero
    bytes after the last row; and the byte where each row starts."""
    stream = weight.values.long()
    codes = torch.stack([stream & 15, stream >> 4], -1).flatten().tolist()
    mask = weight.index.reshape(-1, weight.index.shape[-1])
    out, starts, p = [], [], 0
    for row in mask:
        starts.append(len(out))
        bits = ((row.long()[:, None] >> torch.arange(8)) & 1).flatten().tolist()
        for k in range(0, len(bits), 64):
            n = sum(bits[k:k + 64])
            chunk = codes[p:p + n] + [0] * (n % 2)
            out += [chunk[i] | chunk[i + 1] << 4 for i in range(0, len(chunk), 2)]
            p += n
    starts.append(len(out))
    return out + [0] * 32, starts


def test_act8_layout_puts_each_chunk_of_an_int4_bitmask_on_a_fresh_byte(compiled):
    if not ops.act8_vector_available():
        pytest.skip("the act8 vector kernels do not run on this CPU (they alone take the layout)")
    for shape in ACT8_SHAPES:
        weight = quantized("bitmask", shape, 4, 32, seed=shape[-1])
        codes, starts = compiled.act8_layout("bitmask", *ops._quant_args(weight), 2)
        want_codes, want_starts = expected_act8_layout(weight)
        assert codes.tolist() == want_codes and starts.tolist() == want_starts
    for fmt, bits in [("bitmask", 8), ("dense", 4)]:  # the kernels that take no layout
        assert compiled.act8_layout(fmt, *ops._quant_args(quantized(fmt, (1, 4, 64), bits, 32)), 2) == []
    weight = quantized("bitmask", (1, 4, 64), 4, 32)
    assert compiled.act8_layout("bitmask", *ops._quant_args(weight), 0) == []  # the scalar loops run


def test_act8_layout_is_rebuilt_when_the_codes_change_in_place(compiled):
    """quant_decode_linear keeps each int4 bitmask's layout while its tensors live: a change in place
    (load_state_dict copies into the same tensors) must not leave the vector kernel on the old codes."""
    weight = quantized("bitmask", (1, 6, 130), 4, 32, seed=5)
    x = torch.randn(1, 130, generator=torch.Generator().manual_seed(0))
    with ops.use_backend("cpp"):
        before = ops.quant_decode_linear(x, weight)
        weight.values.bitwise_xor_(0x5A)  # other codes in the same tensor
        after = ops.quant_decode_linear(x, weight)
    with ops.use_backend("scalar"):
        assert torch.equal(after, ops.quant_decode_linear(x, weight))
    assert not torch.equal(after, before)


def test_act8_layout_that_does_not_fit_the_weight_is_refused(compiled):
    if not ops.act8_vector_available():
        pytest.skip("the act8 vector kernels do not run on this CPU (they alone take the layout)")
    weight = quantized("bitmask", (1, 6, 130), 4, 32, seed=5)
    codes, starts = compiled.act8_layout("bitmask", *ops._quant_args(weight), 2)
    other = compiled.act8_layout("bitmask", *ops._quant_args(quantized("bitmask", (1, 7, 130), 4, 32)), 2)
    for layout in ([codes[:-1], starts], other):  # its codes cut short; another shape's
        with pytest.raises(RuntimeError, match="act8 layout does not fit"):
            compiled.quant_decode_matmul(torch.randn(1, 130), None, "bitmask", *ops._quant_args(weight), None, 2,
                                         layout)

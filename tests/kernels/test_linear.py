"""CompressedLinear / CompressedExperts: drop-in outputs, spec -> empty -> load, cost counts."""

from __future__ import annotations

import pytest
import torch
from helpers import nm_weight, unstructured_weight
from safetensors.torch import load_file, save_file
from torch import nn

from sparse_expansion.kernels import CompressedExperts, CompressedLinear, decompress, ops


@pytest.fixture(params=["auto", "torch"])
def backend(request):
    with ops.use_backend(request.param):
        yield request.param


def linear_with(weight: torch.Tensor, bias: bool = True) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["unstructured", "2:4", "4:8"])
def test_matches_nn_linear_on_the_decompressed_weight(backend, value_dtype, kind):
    if kind == "unstructured":
        w = unstructured_weight((24, 40), 0.3)
    else:
        w = nm_weight((24, 40), *map(int, kind.split(":")))
    linear = linear_with(w)
    module = CompressedLinear.from_linear(linear, value_dtype)
    assert module.format == ("bitmask" if kind == "unstructured" else kind)
    reference = linear_with(decompress(module.compressed()).float())
    reference.bias = linear.bias
    for shape in [(1, 40), (2, 7, 40), (33, 40)]:
        x = torch.randn(shape)
        torch.testing.assert_close(module(x), reference(x), rtol=1e-5, atol=1e-5)


def test_spec_rebuilds_an_empty_module_that_loads_the_saved_tensors(tmp_path):
    module = CompressedLinear.from_linear(linear_with(unstructured_weight((10, 20), 0.4)), torch.float16)
    save_file(module.state_dict(), tmp_path / "w.safetensors")
    assert set(module.state_dict()) == {"values", "mask", "row_offsets", "bias"}
    spec = module.spec()
    assert spec == {"in_features": 20, "out_features": 10, "format": "bitmask", "value_dtype": "float16",
                    "stored_values": module.values.numel(), "bias": True}
    loaded = CompressedLinear.from_spec(spec)
    loaded.load_state_dict(load_file(tmp_path / "w.safetensors"), strict=True)
    x = torch.randn(3, 20)
    assert torch.equal(loaded(x), module(x))


def test_loading_inconsistent_tensors_is_refused():
    module = CompressedLinear.from_linear(linear_with(unstructured_weight((10, 20), 0.4)), torch.float32)
    state = module.state_dict()
    state["mask"] = torch.zeros_like(state["mask"])  # popcounts no longer match the offsets
    with pytest.raises(ValueError, match="row_offsets"):
        CompressedLinear.from_spec(module.spec()).load_state_dict(state)


def test_counts_like_a_sparse_linear():
    w = nm_weight((8, 16), 2, 4)  # row 0 all zero: its fillers are stored but are not non-zeros
    module = CompressedLinear.from_linear(linear_with(w), torch.float32, format="2:4")
    assert module.nonzeros() == int((w != 0).sum())
    assert module.flops_per_token() == 2 * module.nonzeros()


@pytest.mark.parametrize("fmt", ["bitmask", "2:4"])
def test_experts_route_each_token_to_its_expert(backend, fmt):
    stacked = torch.stack([nm_weight((12, 32), 2, 4, seed=e) for e in range(4)])
    bias = torch.randn(12)
    module = CompressedExperts.from_dense(stacked, bias, torch.bfloat16, format=fmt)
    dense = decompress(module.compressed()).float()
    x = torch.randn(2, 9, 32)
    labels = torch.randint(0, 4, (2, 9))
    want = torch.einsum("toi,ti->to", dense[labels.flatten()], x.reshape(-1, 32)) + bias
    torch.testing.assert_close(module(x, labels), want.reshape(2, 9, 12), rtol=1e-5, atol=1e-5)
    assert module(x[:1, :1], labels[:1, :1]).shape == (1, 1, 12)

    spec = module.spec()
    assert spec["num_experts"] == 4 and spec["format"] == fmt
    loaded = CompressedExperts.from_spec(spec)
    loaded.load_state_dict(module.state_dict(), strict=True)
    assert torch.equal(loaded(x, labels), module(x, labels))
    nnz = [int((stacked[e].bfloat16() != 0).sum()) for e in range(4)]
    assert module.expert_nonzeros() == nnz and module.nonzeros() == sum(nnz)
    assert module.flops_per_token() == round(2 * sum(nnz) / 4)

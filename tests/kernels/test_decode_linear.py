"""DecodeLinear: dense bfloat16 linears through the C++ AVX512-BF16 dot product at decode (1-2 tokens),
torch's F.linear otherwise; same Parameters, so tied weights stay tied and the state dict is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model

from sparse_expansion.kernels import DecodeLinear, build, ops
from sparse_expansion.storage import set_weights

SHAPES = [(1, 1), (7, 33), (5, 32), (9, 70), (64, 576), (131, 200)]


@pytest.fixture
def bf16_dot():
    if build.find_compiler() is None:
        pytest.skip("no C++ compiler")
    build.kernels(retry_failed=True)
    if not ops.bf16_dot_available():
        pytest.skip("this CPU has no AVX512-BF16: dense_linear is F.linear here")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tokens", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_float64_reference(bf16_dot, shape, tokens, bias):
    rows, cols = shape
    g = torch.Generator().manual_seed(rows * 100 + cols)
    w = torch.randn(rows, cols, generator=g).bfloat16()
    x = torch.randn(1, tokens, cols, generator=g).bfloat16()
    b = torch.randn(rows, generator=g).bfloat16() if bias else None
    y = ops.dense_linear(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert y.dtype == torch.bfloat16 and y.shape == (1, tokens, rows)
    # fp32 accumulation, one rounding to bfloat16 at the end: within a bfloat16 step of the output
    assert ((y.double() - ref).abs() <= 2 ** -7 * ref.abs() + 1e-3 * cols ** 0.5).all()
    torch_bf16 = F.linear(x, w, b)
    assert (y.float() - torch_bf16.float()).abs().max() <= 2 ** -6 * torch_bf16.float().abs().max()


def test_other_inputs_are_f_linear_exactly():
    w = torch.randn(12, 40).bfloat16()
    for x in (torch.randn(3, 40).bfloat16(), torch.randn(1, 40)):  # 3 tokens; float32 inputs
        assert torch.equal(ops.dense_linear(x, w if x.dtype == torch.bfloat16 else w.float()),
                           F.linear(x, w if x.dtype == torch.bfloat16 else w.float()))
    x = torch.randn(1, 40).bfloat16().requires_grad_()  # autograd: torch's op, gradients flow
    ops.dense_linear(x, w).sum().backward()
    assert x.grad is not None


def test_backends_without_the_kernel_fall_back(bf16_dot):
    w, x = torch.randn(12, 40).bfloat16(), torch.randn(1, 40).bfloat16()
    for mode in ("avx2", "torch"):
        with ops.use_backend(mode):
            assert not ops.bf16_dot_available()
            assert torch.equal(ops.dense_linear(x, w), F.linear(x, w))


def test_set_weights_wraps_bf16_linears_on_the_same_parameters(bf16_dot):
    model = tiny_model("llama").to(torch.bfloat16)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    keys = set(model.state_dict())
    ids = torch.randint(2, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids, use_cache=True)
    set_weights(model, "compressed")
    wrapped = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    assert len(wrapped) == sum(1 for _ in model.model.layers) * 7 + 1  # q k v o gate up down, LM head
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        got = model(ids, use_cache=True)  # the prompt: F.linear, identical
        assert torch.equal(got.logits, want.logits)
        step = torch.tensor([[5]])
        a = model(step, past_key_values=got.past_key_values).logits.float()  # one token: the kernel
    set_weights(model, "dense")
    assert not any(isinstance(m, DecodeLinear) for m in model.modules())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        b = model(step, past_key_values=want.past_key_values).logits.float()
    assert (a - b).abs().max() <= 0.05 * b.abs().max()


def test_float32_models_are_left_alone():
    model = tiny_model("llama")
    set_weights(model, "compressed")
    assert not any(isinstance(m, DecodeLinear) for m in model.modules())

"""Streaming collection of neuron inputs: same result as all-at-once, bounded by settings."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model

from sparse_expansion.arch import decoder_layers
from sparse_expansion.errors import UsageError
from sparse_expansion.neurons.collect import (
    collect_inputs,
    iter_layer_inputs,
    neuron_projections,
    parse_layers,
    plan_passes,
    projection_outputs,
    sample_positions,
)


def _windows(n=6, seqlen=24, seed=0):
    return torch.randint(0, 128, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _all_at_once(model, windows):
    """Every token's actual output of every neuron projection, from hooks on one big forward."""
    outs = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        for name in neuron_projections(model):
            def hook(_m, _a, out, key=(i, name)):
                outs[key] = out.reshape(-1, out.shape[-1]).detach().double()
            handles.append(layer.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        model(windows, use_cache=False)
    for h in handles:
        h.remove()
    return outs


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "opt"])
def test_streaming_equals_all_at_once(family):
    model = tiny_model(family)
    windows = _windows()
    reference = _all_at_once(model, windows)
    positions = sample_positions(windows.numel(), 50, seed=1)
    for batch_size in (1, 4):
        inputs = collect_inputs(model, windows, [0, 1], positions, batch_size=batch_size, progress=False)
        for i, x in inputs.items():
            assert x.shape == (50, model.config.hidden_size)
            for name in neuron_projections(model):
                module = decoder_layers(model)[i].get_submodule(name)
                torch.testing.assert_close(projection_outputs(module, x), reference[(i, name)][positions],
                                           rtol=1e-5, atol=1e-5)


def test_passes_split_by_memory_give_identical_inputs():
    model = tiny_model("llama")
    windows = _windows()
    one = dict(iter_layer_inputs(model, windows, [0, 1], 40, seed=2, memory_mb=100, progress=False))
    width = model.config.hidden_size
    tiny_budget = 40 * width * 4 / 2**20  # room for exactly one layer per pass
    assert plan_passes([0, 1], 40, width, tiny_budget) == [[0], [1]]
    two = dict(iter_layer_inputs(model, windows, [0, 1], 40, seed=2, memory_mb=tiny_budget, progress=False))
    for i in (0, 1):
        assert torch.equal(one[i], two[i])


def test_kept_tokens_are_bounded_by_the_setting_not_the_corpus():
    model = tiny_model("llama")
    small = dict(iter_layer_inputs(model, _windows(n=2), [1], 30, progress=False))
    large = dict(iter_layer_inputs(model, _windows(n=12), [1], 30, progress=False))
    assert small[1].shape == large[1].shape == (30, model.config.hidden_size)
    assert torch.isfinite(large[1]).all()
    assert sample_positions(100, 1000).tolist() == list(range(100))  # fewer tokens than asked: keep all
    assert torch.equal(sample_positions(1000, 10, seed=3), sample_positions(1000, 10, seed=3))


def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers("0,2-3", 4) == [0, 2, 3]
    assert parse_layers("-1", 4) == [3]
    for bad in ("7", "a,b", "1-9"):
        with pytest.raises(UsageError):
            parse_layers(bad, 4)

"""Model surgery: replace() by name, hooks at named sites that never outlive their block."""

import contextlib

import pytest
import torch
from helpers import tiny_model
from torch import nn

from sparse_expansion.surgery import StopForward, flat_inputs, hooks, layer_site, replace


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_replace_swaps_by_name_and_returns_the_old_module():
    model = tiny_model("llama")
    name = layer_site(model, 1, "mlp.down_proj")
    assert name == "model.layers.1.mlp.down_proj"
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, old.out_features, bias=False)
    assert replace(model, name, new) is old
    assert model.model.layers[1].mlp.down_proj is new


def test_hooks_see_the_named_sites_inputs_and_are_removed_even_when_the_forward_fails():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (2, 8))
    seen = []
    with hooks(model, {layer_site(model, 0, "mlp.up_proj"): flat_inputs(seen.append)}):
        model(ids)
    assert seen[0].shape == (16, 32) and no_hooks_left(model)

    def fail(*_args):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), hooks(model, {layer_site(model, 1): fail}):
        model(ids)
    assert no_hooks_left(model)


def test_stop_after_ends_the_forward_at_the_site():
    model = tiny_model("llama")
    seen = {0: 0, 1: 0}
    sites = {layer_site(model, i, "mlp.gate_proj"): flat_inputs(lambda _x, i=i: seen.__setitem__(i, seen[i] + 1))
             for i in (0, 1)}
    with hooks(model, sites, stop_after=layer_site(model, 0)), contextlib.suppress(StopForward):
        model(torch.randint(0, 128, (1, 8)))
    assert seen == {0: 1, 1: 0} and no_hooks_left(model)


def test_an_output_hook_replaces_the_output():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 8))
    site = layer_site(model, 1, "mlp")
    with hooks(model, {site: lambda _m, _a, out: torch.zeros_like(out)}):
        zeroed = model(ids).logits
    with hooks(model, {site: lambda _m, _a, out: None}):
        kept = model(ids).logits
    assert torch.equal(kept, model(ids).logits) and not torch.equal(zeroed, kept)

"""Model surgery in one place: replace a submodule by name, and hooks at named sites.

`replace(model, name, module)` is the one way a module is swapped in (the engine's replacements,
a saved folder's modules, how weights sit in memory): it sets the attribute and puts the new module
where the old one's tensors are (PEFT's replace step).

Hooks are placed by the module's dotted name, the same stable names `named_modules` gives
(`layer_site(model, 3, "mlp.gate_proj")` -> "model.layers.3.mlp.gate_proj"), and only inside
`with hooks(...)`: they are removed when the block ends, however it ends, so none can leak into
a later forward pass (TransformerLens's hook points, without inserting modules into the model).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

#: torch's forward hook: (module, positional args, output) -> a new output, or None to keep it.
OutputHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]
#: torch's forward pre-hook with keyword arguments: (module, args, kwargs) -> None.
InputHook = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any]


class StopForward(Exception):
    """Raised at a site after which the rest of the model need not run (what was wanted is seen);
    the caller suppresses it around the forward call."""

    @staticmethod
    def hook(*_args) -> None:
        raise StopForward


def replace(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put `module` at the dotted `name` under `root`, on the device of the module it replaces
    (which is returned)."""
    old = root.get_submodule(name)
    placed = next(itertools.chain(old.parameters(), old.buffers()), None)
    if placed is not None:
        module = module.to(placed.device)
    root.set_submodule(name, module)
    return old


@torch.no_grad()
def linear_from(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """A plain nn.Linear holding `weight` [out, in] (and `bias`), in the weight's dtype and device: what a
    compressed or re-solved module becomes when it leaves as ordinary float weights."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return linear


def layer_site(model: nn.Module, index: int, name: str = "") -> str:
    """The name of decoder layer `index` of a Hugging Face causal LM, or of `name` inside it."""
    from .arch import architecture_of

    site = f"{architecture_of(model).layers}.{index}"
    return f"{site}.{name}" if name else site


def flat_inputs(sink: Callable[[torch.Tensor], Any]) -> OutputHook:
    """An output hook that hands the site's first input, as 2-D [tokens, features], to `sink`."""
    def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        x = args[0]
        sink(x.reshape(-1, x.shape[-1]).detach())
    return hook


@contextlib.contextmanager
def hooks(root: nn.Module, outputs: Mapping[str, OutputHook] | None = None, *,
          before: Mapping[str, InputHook] | None = None, stop_after: str | None = None) -> Iterator[None]:
    """Hooks at named sites of `root` for the duration of the block.

    `outputs`: site -> forward hook (sees the output; may return a replacement); `before`: site ->
    pre-hook with the call's keyword arguments; `stop_after`: a site whose forward ends the model's
    forward with StopForward. Every hook is removed on exit, also when the forward pass fails."""
    handles = []
    try:
        for site, hook in (outputs or {}).items():
            handles.append(root.get_submodule(site).register_forward_hook(hook))
        for site, pre in (before or {}).items():
            handles.append(root.get_submodule(site).register_forward_pre_hook(pre, with_kwargs=True))
        if stop_after is not None:
            handles.append(root.get_submodule(stop_after).register_forward_hook(StopForward.hook))
        yield
    finally:
        for handle in handles:
            handle.remove()

"""Record and patch the routing of an sgatlin model through forward hooks on each layer's
`ffn.router`, which returns (scores, indices) [B, T, C, k]. Hooks never outlive their block."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UsageError
from ...surgery import hooks
from ..layers import SparselyGatedLinear
from ..transformer import Transformer

Routing = tuple[torch.Tensor, torch.Tensor]  # (scores, indices), each [B, T, C, k]


def routers(model: Transformer) -> list[torch.nn.Module]:
    """The router of every layer, in order; refuses models without sgatlin layers."""
    return [model.get_submodule(site) for site in router_sites(model)]


def router_sites(model: Transformer) -> list[str]:
    """The names of the routers of every layer, in order ("blocks.3.ffn.router"); refuses models
    without sgatlin layers."""
    blocks = getattr(model, "blocks", None)
    found = [f"blocks.{i}.ffn.router" for i, b in enumerate(blocks or ()) if isinstance(b.ffn, SparselyGatedLinear)]
    if not found:
        ffn = getattr(getattr(model, "cfg", None), "ffn", type(model).__name__)
        raise UsageError(f"the model's FFN is {ffn!r}; the gating look needs a model trained with "
                         "--ffn sgatlin")
    return found


@contextlib.contextmanager
def record_routing(model: Transformer) -> Iterator[list[list[Routing]]]:
    """Collect (scores, indices) per layer for every forward inside the block."""
    sites = router_sites(model)
    store: list[list[Routing]] = [[] for _ in sites]

    def keep(i: int, _m, _inp, out) -> None:
        store[i].append((out[0].detach(), out[1].detach()))
    with hooks(model, {site: functools.partial(keep, i) for i, site in enumerate(sites)}):
        yield store


def patch_routing(model: Transformer, position: int, source: list[Routing],
                  layers: list[int] | None = None) -> contextlib.AbstractContextManager[None]:
    """Replace every listed layer's router output at `position` by `source[layer]` there."""
    def patch(i: int, _m, _inp, out) -> Routing:
        scores, indices = out[0].clone(), out[1].clone()
        scores[:, position] = source[i][0][:, position]
        indices[:, position] = source[i][1][:, position]
        return scores, indices
    return hooks(model, {site: functools.partial(patch, i) for i, site in enumerate(router_sites(model))
                         if layers is None or i in layers})


@dataclass
class Recording:
    tokens: np.ndarray  # [n] token ids (windows concatenated)
    window: int  # tokens per window (contexts never cross a window)
    scores: np.ndarray  # [L, n, C, k]
    indices: np.ndarray  # [L, n, C, k]
    n_neurons: int


@torch.no_grad()
def record(model: Transformer, windows: torch.Tensor, batch_size: int = 16) -> Recording:
    """Run the model over windows [W, T]; keep every layer's routing for every token."""
    model.eval()
    with record_routing(model) as store:
        for i in range(0, len(windows), batch_size):
            model(windows[i:i + batch_size])
    scores = np.stack([torch.cat([s for s, _ in layer]).flatten(0, 1).numpy() for layer in store])
    indices = np.stack([torch.cat([j for _, j in layer]).flatten(0, 1).numpy() for layer in store])
    n_neurons = model.blocks[0].ffn.n_neurons
    return Recording(windows.flatten().numpy(), windows.shape[1], scores, indices.astype(np.int32),
                     n_neurons)

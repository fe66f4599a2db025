"""Record and patch the routing of an sgatlin model through forward hooks on each layer's
`ffn.router`, which returns (scores, indices) [B, T, C, k]. Hooks never outlive their block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UsageError
from ..layers import SparselyGatedLinear
from ..transformer import Transformer

Routing = tuple[torch.Tensor, torch.Tensor]  # (scores, indices), each [B, T, C, k]


def routers(model: Transformer) -> list[torch.nn.Module]:
    """The router of every layer, in order; refuses models without sgatlin layers."""
    blocks = getattr(model, "blocks", None)
    found = [b.ffn.router for b in blocks or () if isinstance(b.ffn, SparselyGatedLinear)]
    if not found:
        ffn = getattr(getattr(model, "cfg", None), "ffn", type(model).__name__)
        raise UsageError(f"the model's FFN is {ffn!r}; the gating look needs a model trained with "
                         "--ffn sgatlin")
    return found


@contextlib.contextmanager
def record_routing(model: Transformer) -> Iterator[list[list[Routing]]]:
    """Collect (scores, indices) per layer for every forward inside the block."""
    store: list[list[Routing]] = [[] for _ in routers(model)]
    handles = []
    for i, router in enumerate(routers(model)):
        def hook(_m, _inp, out, i=i):
            store[i].append((out[0].detach(), out[1].detach()))
        handles.append(router.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patch_routing(model: Transformer, position: int, source: list[Routing],
                  layers: list[int] | None = None) -> Iterator[None]:
    """Replace every listed layer's router output at `position` by `source[layer]` there."""
    handles = []
    for i, router in enumerate(routers(model)):
        if layers is not None and i not in layers:
            continue

        def hook(_m, _inp, out, i=i):
            scores, indices = out[0].clone(), out[1].clone()
            scores[:, position] = source[i][0][:, position]
            indices[:, position] = source[i][1][:, position]
            return scores, indices
        handles.append(router.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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

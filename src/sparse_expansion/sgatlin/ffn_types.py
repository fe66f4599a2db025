"""The registry of feed-forward types a sgatlin-study transformer can use.

A type is a layer class (`Layer(d_model, **kwargs)` with `forward(x: [B, T, d]) -> [B, T, d]`
and `flops_per_token()`), the sizes it gets on the scale ladder (docs/METHODS.md, sgatlin), and one line
for --help and reports. `train --ffn`, `isoflop --ffn`, the transformer's builder and the
isoflop plot all read FFN_TYPES, so adding a type is its layer class plus one row here (and its
tests). Layer classes are import paths resolved on use: reading the registry (the CLI's --help)
does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FFNType:
    """One registry row."""

    name: str
    layer_path: str  # "module:Class"
    sizes: Callable[[int, float], dict[str, Any]]  # (d_model, scale) -> the layer's kwargs
    summary: str  # one line for --help and reports
    color: str  # its colour in the isoflop plot

    @property
    def options(self) -> frozenset[str]:
        """The keyword arguments its layer takes (the keys of its sizes at any scale)."""
        return frozenset(self.sizes(128, 1.0))

    @property
    def layer(self) -> type:
        module, _, name = self.layer_path.partition(":")
        return getattr(importlib.import_module(module), name)


def dense_width(d_model: int) -> int:
    """⌊(8/3)·d/256⌋·256 as the reference, floored at 256 so the smallest CPU scales stay valid."""
    return max(256, int(8 / 3 * d_model / 256) * 256)


def _dense(d_model: int, scale: float) -> dict[str, Any]:
    return {"d_ffw": dense_width(d_model)}


def _moe(d_model: int, scale: float) -> dict[str, Any]:
    return {"d_ffw": d_model, "n_experts": 16, "k": 2}


def _peer(d_model: int, scale: float) -> dict[str, Any]:
    n_keys = round(32 + 24 * scale)
    return {"n_neurons": n_keys**2, "k": 8, "n_channels": 16, "d_key": 128}


def _sgatlin(d_model: int, scale: float) -> dict[str, Any]:
    n_keys = round(16 + 12 * scale)
    return {"n_neurons": n_keys**2, "k": 8, "n_channels": 16, "d_key": 128,
            "router": "product_dense", "activation": "identity"}


_LAYERS = "sparse_expansion.sgatlin.layers"
FFN_TYPES: dict[str, FFNType] = {t.name: t for t in (
    FFNType("mlp", f"{_LAYERS}:MLP", _dense,
            "dense two-layer GELU MLP of width floor(8/3 d / 256) * 256", "tab:blue"),
    FFNType("swiglu", f"{_LAYERS}:SwiGLU", _dense,
            "dense GLU (GPT-OSS clamped SwiGLU) of the MLP's width", "tab:orange"),
    FFNType("moe", f"{_LAYERS}:MoE", _moe,
            "top-2 mixture of 16 GLU experts of width d", "tab:green"),
    FFNType("peer", f"{_LAYERS}:PEER", _peer,
            "16 heads share N = (32+24s)^2 GELU neurons, product-key router, top-8 (PEER)",
            "tab:purple"),
    FFNType("sgatlin", f"{_LAYERS}:SparselyGatedLinear", _sgatlin,
            "16 channels of N = (16+12s)^2 linear neurons, top-8, raw router scores as gates",
            "tab:red"),
)}


def ffn_type(name: str) -> FFNType:
    if name not in FFN_TYPES:
        raise ValueError(f"unknown ffn {name!r}; choose from {', '.join(FFN_TYPES)}")
    return FFN_TYPES[name]


def ffn_kwargs(name: str, d_model: int, scale: float, **overrides: Any) -> dict[str, Any]:
    """The layer's kwargs at this size; `overrides` replace entries (others are an error)."""
    kwargs = ffn_type(name).sizes(d_model, scale)
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise ValueError(f"options {sorted(unknown)} do not apply to ffn {name!r}")
    kwargs.update(overrides)
    return kwargs


def build_ffn(name: str, d_model: int, kwargs: dict[str, Any]) -> Any:
    """A fresh layer of type `name` (an nn.Module)."""
    return ffn_type(name).layer(d_model, **kwargs)


def types_help() -> str:
    """The registry as one --help paragraph: 'name: summary; ...'."""
    return "; ".join(f"{t.name}: {t.summary}" for t in FFN_TYPES.values())

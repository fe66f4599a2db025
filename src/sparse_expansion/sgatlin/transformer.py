"""A small decoder-only transformer with a pluggable FFN (nanoGPT-sized, readable in one sitting).

Pre-RMSNorm, QK-norm, rotary position embeddings, no biases outside the GLU baselines, tied
input/output embeddings. `ModelConfig` holds every constructor argument and is saved beside the
weights, so a checkpoint rebuilds its model exactly. `config_for_scale` is the scale ladder of
DESIGN.md §4: d = 128·s, layers = 2·s, head dim 64.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import flops
from .layers import MLP, PEER, MoE, SparselyGatedLinear, SwiGLU
from .router import trunc_normal_

FFN_TYPES = ("mlp", "swiglu", "moe", "peer", "sgatlin")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved as JSON with the weights."""

    vocab_size: int
    d_model: int
    n_layers: int
    ffn: str
    d_head: int = 64
    seq_len: int = 128
    ffn_kwargs: dict[str, Any] = field(default_factory=dict)
    scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)


def dense_width(d_model: int) -> int:
    """⌊(8/3)·d/256⌋·256 as the reference, floored at 256 so the smallest CPU scales stay valid."""
    return max(256, int(8 / 3 * d_model / 256) * 256)


def config_for_scale(ffn: str, scale: float, vocab_size: int, seq_len: int = 128,
                     **overrides: Any) -> ModelConfig:
    """The scale ladder. s may be a half-integer (d = 64 at s = 0.5) so the CPU gets a small end.

    FFN sizes follow the reference: MLP/SwiGLU width dense_width(d); MoE 16 experts of width d,
    top-2; sgatlin N = (16 + 12s)² per channel, C = 16, k = 8, d_key = 128; PEER N = (32 + 24s)².
    `overrides` replace entries of ffn_kwargs (e.g. activation="gelu" for the ablation).
    """
    d_model, n_layers = 128 * scale, 2 * scale
    if ffn not in FFN_TYPES:
        raise ValueError(f"unknown ffn {ffn!r}; choose from {', '.join(FFN_TYPES)}")
    if d_model != int(d_model) or int(d_model) % 64 or n_layers != int(n_layers):
        raise ValueError(f"scale {scale} must be a multiple of 0.5 (d = 128·s, layers = 2·s)")
    d_model, n_layers = int(d_model), int(n_layers)
    if ffn in ("mlp", "swiglu"):
        kwargs: dict[str, Any] = {"d_ffw": dense_width(d_model)}
    elif ffn == "moe":
        kwargs = {"d_ffw": d_model, "n_experts": 16, "k": 2}
    elif ffn == "sgatlin":
        n_keys = round(16 + 12 * scale)
        kwargs = {"n_neurons": n_keys**2, "k": 8, "n_channels": 16, "d_key": 128,
                  "router": "product_dense", "activation": "identity"}
    else:
        n_keys = round(32 + 24 * scale)
        kwargs = {"n_neurons": n_keys**2, "k": 8, "n_channels": 16, "d_key": 128}
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise ValueError(f"options {sorted(unknown)} do not apply to ffn {ffn!r}")
    kwargs.update(overrides)
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, ffn=ffn,
                       seq_len=seq_len, ffn_kwargs=kwargs, scale=scale)


def build_ffn(cfg: ModelConfig) -> nn.Module:
    kw = cfg.ffn_kwargs
    if cfg.ffn == "mlp":
        return MLP(cfg.d_model, **kw)
    if cfg.ffn == "swiglu":
        return SwiGLU(cfg.d_model, **kw)
    if cfg.ffn == "moe":
        return MoE(cfg.d_model, **kw)
    if cfg.ffn == "peer":
        return PEER(cfg.d_model, **kw)
    if cfg.ffn == "sgatlin":
        return SparselyGatedLinear(cfg.d_model, **kw)
    raise ValueError(f"unknown ffn {cfg.ffn!r}")


def rotary_tables(d_head: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, d_head] for rotate-half RoPE with base 10000."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, Dh]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, d_model: int, d_head: int, seq_len: int):
        super().__init__()
        if d_model % d_head:
            raise ValueError(f"d_model={d_model} must be a multiple of d_head={d_head}")
        self.n_heads, self.d_head = d_model // d_head, d_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        trunc_normal_(self.qkv.weight, d_model)
        trunc_normal_(self.out.weight, d_model)
        self.q_norm, self.k_norm = nn.RMSNorm(d_head, eps=1e-6), nn.RMSNorm(d_head, eps=1e-6)
        cos, sin = rotary_tables(d_head, seq_len)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        cos, sin = self.cos[:t], self.sin[:t]
        q = apply_rotary(self.q_norm(q), cos, sin)
        k = apply_rotary(self.k_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = Attention(cfg.d_model, cfg.d_head, cfg.seq_len)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.ffn = build_ffn(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, V] (output projection tied to the embedding)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T

    def flops_per_token(self) -> int:
        """Forward matmul FLOPs per token at the configured seq_len (no embeddings, no logits)."""
        per_layer = flops.attention(self.cfg.d_model, self.cfg.seq_len)
        per_layer += self.blocks[0].ffn.flops_per_token()
        return self.cfg.n_layers * per_layer


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

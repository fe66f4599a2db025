"""A small decoder-only transformer with a pluggable FFN (nanoGPT-sized, readable in one sitting).

Pre-RMSNorm, QK-norm, rotary position embeddings, no biases outside the GLU baselines, tied
input/output embeddings. `ModelConfig` holds every constructor argument and is the model's spec
in its saved artifact, so a saved model or checkpoint rebuilds exactly. The FFN is any type of
the registry in `ffn_types.py`. `config_for_scale` is the scale ladder (docs/METHODS.md, sgatlin):
d = 128·s, layers = 2·s, head dim 64.
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
from .ffn_types import build_ffn, ffn_kwargs, ffn_type
from .router import trunc_normal_


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model: the `spec` of its saved artifact."""

    vocab_size: int
    d_model: int
    n_layers: int
    ffn: str  # a name in ffn_types.FFN_TYPES
    d_head: int = 64
    seq_len: int = 128
    ffn_kwargs: dict[str, Any] = field(default_factory=dict)
    scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**data)


def config_for_scale(ffn: str, scale: float, vocab_size: int, seq_len: int = 128,
                     **overrides: Any) -> ModelConfig:
    """The scale ladder. s may be a half-integer (d = 64 at s = 0.5) so the CPU gets a small end.

    FFN sizes at each scale are the registry's (ffn_types.py, after the reference).
    `overrides` replace entries of ffn_kwargs (e.g. activation="gelu" for the ablation).
    """
    ffn_type(ffn)  # an unknown name is refused before the scale
    d_model, n_layers = 128 * scale, 2 * scale
    if (not math.isfinite(scale) or scale <= 0 or d_model != int(d_model) or int(d_model) % 64
            or n_layers != int(n_layers)):
        raise ValueError(f"scale {scale} must be a positive multiple of 0.5 (d = 128·s, layers = 2·s)")
    d_model, n_layers = int(d_model), int(n_layers)
    kwargs = ffn_kwargs(ffn, d_model, scale, **overrides)
    return ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, ffn=ffn,
                       seq_len=seq_len, ffn_kwargs=kwargs, scale=scale)


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
        self.ffn = build_ffn(cfg.ffn, cfg.d_model, cfg.ffn_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """tokens -> logits. Saved and loaded as the artifact kind "sgatlin_lm" (artifact.py): its
    spec is the ModelConfig, so `sparse_expansion.models.load_model(DIR)` rebuilds it exactly."""

    artifact_kind = "sgatlin_lm"

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

    def spec(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Transformer:
        return cls(ModelConfig.from_dict(spec))

    def flops_per_token(self) -> int:
        """Forward matmul FLOPs per token at the configured seq_len (no embeddings, no logits)."""
        per_layer = flops.attention(self.cfg.d_model, self.cfg.seq_len)
        per_layer += self.blocks[0].ffn.flops_per_token()
        return self.cfg.n_layers * per_layer


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

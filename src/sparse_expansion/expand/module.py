"""SparseExpertLinear: a linear layer expanded into k sparse experts behind a router.

Forward routes every token, groups tokens by expert, runs one matmul per expert and scatters
the results back: the dense layer is never computed. Saved and restored by `artifact.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .router import Router

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _raw(t: torch.Tensor) -> np.ndarray:
    """The tensor's bits as a numpy integer array (numpy has no bfloat16)."""
    return t.detach().cpu().contiguous().flatten().view(_SAME_SIZE_INT[t.element_size()]).numpy()


def pack_sparse(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(non-zero values in row-major order, bitmask packed 8 per byte, most significant bit first):
    k sparse experts stored in ~(1 - s) x 4 + 1/8 bytes per weight instead of 4.

    Done in numpy (np.compress, packbits), faster than torch's boolean indexing
    (benchmarks/design_choices.py, key pack_numpy)."""
    mask = (dense != 0).cpu().flatten().numpy()
    values = torch.from_numpy(np.compress(mask, _raw(dense))).view(dense.dtype)
    return values.to(dense.device), torch.from_numpy(np.packbits(mask)).to(dense.device)


def unpack_sparse(values: torch.Tensor, packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    numel = int(torch.Size(shape).numel())
    if packed.numel() * 8 < numel:
        raise RuntimeError(f"packed experts hold a mask of {packed.numel() * 8} bits for {numel} weights")
    mask = np.unpackbits(packed.cpu().numpy(), count=numel).view(bool)
    if int(mask.sum()) != values.numel():
        raise RuntimeError(f"packed experts hold {values.numel()} values for a mask of {int(mask.sum())}")
    raw = _raw(values)
    dense = np.zeros(numel, dtype=raw.dtype)
    np.put(dense, np.flatnonzero(mask), raw)
    return torch.from_numpy(dense).view(values.dtype).reshape(shape).to(values.device)


class SparseExpertLinear(nn.Module):
    """k copies of a linear's weight, each pruned for one cluster of inputs, and the router."""

    artifact_type = "sparse_expert_linear"  # its name in artifact.MODULE_TYPES

    def __init__(self, in_features: int, out_features: int, num_experts: int, pca_dim: int,
                 bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.num_experts, self.pca_dim = num_experts, pca_dim
        self.router = Router(in_features, pca_dim, num_experts)
        self.experts = nn.Parameter(torch.zeros(num_experts, out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        # Saved state holds the experts packed (values + bitmask); in memory they are dense.
        self.register_state_dict_post_hook(_pack_experts)
        self.register_load_state_dict_pre_hook(_unpack_experts)

    @classmethod
    def build(cls, router: Router, experts: torch.Tensor, bias: torch.Tensor | None) -> SparseExpertLinear:
        k, out_features, in_features = experts.shape
        module = cls(in_features, out_features, k, router.components.shape[1], bias is not None)
        module.router.load_state_dict(router.state_dict())
        with torch.no_grad():
            module.experts.copy_(experts)
            if bias is not None:
                module.bias.copy_(bias)
        return module.to_storage_dtype(experts.dtype).to(experts.device)

    # --- artifact: rebuilt from its spec when loading ----------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "num_experts": self.num_experts, "pca_dim": self.pca_dim, "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SparseExpertLinear:
        return cls(int(spec["in_features"]), int(spec["out_features"]), int(spec["num_experts"]),
                   int(spec["pca_dim"]), bool(spec["bias"]))

    # --- compute ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        labels = self.router(flat)
        if flat.shape[0] == 1 or self.num_experts == 1 or bool((labels == labels[0]).all()):
            out = flat @ self.experts[int(labels[0])].t()  # one expert: no gather at all
        else:
            # Sort tokens by expert once, run one matmul per contiguous chunk, unsort once.
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=self.num_experts).tolist()
            chunks = torch.split(flat.index_select(0, order), counts)
            parts = [chunk @ self.experts[e].t() for e, chunk in enumerate(chunks) if chunk.shape[0]]
            out = torch.empty(flat.shape[0], self.out_features, dtype=flat.dtype, device=flat.device)
            out.index_copy_(0, order, torch.cat(parts))
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def to_storage_dtype(self, dtype: torch.dtype) -> SparseExpertLinear:
        """Experts and bias in `dtype`; the router stays float32, so routes do not depend on it."""
        with torch.no_grad():
            self.experts.data = self.experts.data.to(dtype)
            if self.bias is not None:
                self.bias.data = self.bias.data.to(dtype)
        return self

    def expert_nonzeros(self) -> list[int]:
        return [int(n) for n in (self.experts != 0).flatten(1).sum(1)]

    def flops_per_token(self) -> int:
        """A token runs one expert (2 x its non-zeros; the mean over experts) plus the router."""
        nnz = self.expert_nonzeros()
        return round(2 * sum(nnz) / len(nnz)) + self.router.flops_per_token()

    def nonzeros(self) -> int:
        """Stored non-zeros: every expert, plus the router's buffers."""
        router = sum(int((b != 0).sum()) for b in self.router.buffers())
        return sum(self.expert_nonzeros()) + router

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"experts={self.num_experts}, pca_dim={self.pca_dim}")


def _pack_experts(module: SparseExpertLinear, state_dict: dict, prefix: str, _metadata) -> None:
    experts = state_dict.pop(prefix + "experts")
    values, mask = pack_sparse(experts.detach())
    state_dict[prefix + "expert_values"] = values
    state_dict[prefix + "expert_mask"] = mask


def _unpack_experts(module: SparseExpertLinear, state_dict: dict, prefix: str, *_args) -> None:
    values, mask = state_dict.pop(prefix + "expert_values", None), state_dict.pop(prefix + "expert_mask", None)
    if values is not None and mask is not None:
        state_dict[prefix + "experts"] = unpack_sparse(values, mask, module.experts.shape)

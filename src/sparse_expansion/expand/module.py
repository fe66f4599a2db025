"""SparseExpertLinear: a linear layer expanded into k sparse experts behind a router.

The experts live in memory exactly as they are saved: compressed (kernels.CompressedExperts:
bitmask or N:M, values in float32, bfloat16 or float16). Forward routes every token and runs
each token through its own expert with the sparse kernels (kernels/ops.py); the dense layer is
never computed and the experts are never unpacked whole. `use_dense_weights()` switches to a
dense copy of the experts and one grouped GEMM over them (`routed_matmul`; the layout before the
kernels existed: a reference, and the fast path on a GPU).

**Shared router.** Linears that read the same input (gate_proj and up_proj of a Llama MLP) are
built with the same Router object (`build(router, ...)` keeps the object it is given). It is
evaluated once per input: the router remembers the labels of the last tensor it routed, by
identity and version counter, and the second linear fed that very tensor reuses them. A saved
folder stores it once (artifact.py: the manifest names the module whose router another reuses),
and evaluate.model_costs counts its FLOPs once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from ..kernels import CompressedExperts, choose_format, ops
from ..kernels.formats import bitmask_from_flat_msb, quantize, value_dtype_of
from .router import Router

_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def pack_sparse(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout folders were saved in before the experts were kept compressed (`expert_values`,
    `expert_mask`): the non-zero values in row-major order and one bitmask over the whole flattened
    tensor, 8 bits per byte, most significant bit first. Loading still reads it (_load_legacy);
    tests and benchmarks/design/design_choices.py write it."""
    mask = (dense != 0).cpu().flatten().numpy()
    raw = dense.detach().cpu().contiguous().flatten().view(_SAME_SIZE_INT[dense.element_size()]).numpy()
    values = torch.from_numpy(np.compress(mask, raw)).view(dense.dtype)
    return values.to(dense.device), torch.from_numpy(np.packbits(mask)).to(dense.device)


class SparseExpertLinear(nn.Module):
    """k compressed copies of a linear's weight, each pruned for one cluster of inputs, and the router."""

    artifact_type = "sparse_expert_linear"  # its name in artifact.MODULE_TYPES
    shareable = ("router",)  # submodules another SparseExpertLinear may hold too (artifact.py)

    def __init__(self, router: Router, experts: CompressedExperts) -> None:
        super().__init__()
        self.router = router
        self.experts = experts
        self._dense: torch.Tensor | None = None  # use_dense_weights()
        self.register_load_state_dict_pre_hook(_load_legacy)

    @property
    def in_features(self) -> int:
        return self.experts.in_features

    @property
    def out_features(self) -> int:
        return self.experts.out_features

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    @property
    def pca_dim(self) -> int:
        return self.router.components.shape[1]

    @property
    def bias(self) -> torch.Tensor | None:
        return self.experts.bias

    @property
    def value_dtype(self) -> torch.dtype:
        """The float dtype the experts compute in: their values' (float32 for int8 / int4 codes)."""
        return torch.float32 if self.experts.bits is not None else self.experts.values.dtype

    @classmethod
    def build(cls, router: Router, experts: torch.Tensor, bias: torch.Tensor | None, *,
              format: str = "auto", value_dtype: torch.dtype | str | None = None,
              grid: tuple[torch.Tensor, torch.Tensor, int, int] | None = None) -> SparseExpertLinear:
        """From dense experts [k, out, in] (what the compressor solved): compressed in `format`
        ("auto": 2:4 or 4:8 when every expert satisfies it, else bitmask), values in `value_dtype`
        (default: the experts' dtype), or with `grid` (scales, zeros, bits, group size: SparseGPT's
        --bits grid, on which every expert weight lies) as int8 / int4 codes on exactly that grid.
        `router` is kept, not copied: give linears that read the same input the same router."""
        if grid is not None:
            scales, zeros, bits, group = grid
            fmt = choose_format(experts) if format == "auto" else format
            weight = quantize(experts.detach().float(), fmt, bits, group, scales, zeros, exact=True)
            return cls(router, CompressedExperts(weight, bias).to(experts.device))
        dtype = value_dtype_of(value_dtype) if value_dtype is not None else experts.dtype
        compressed = CompressedExperts.from_dense(experts.detach(), bias, dtype, format)
        return cls(router, compressed.to(experts.device))

    # --- artifact: rebuilt from its spec when loading ----------------------------------------------
    def spec(self) -> dict[str, Any]:
        spec = self.experts.spec()
        return {"in_features": self.in_features, "out_features": self.out_features,
                "num_experts": self.num_experts, "pca_dim": self.pca_dim, "bias": self.bias is not None,
                "format": spec["format"], "value_dtype": spec["value_dtype"],
                "stored_values": spec["stored_values"],
                **({"group_size": spec["group_size"]} if "group_size" in spec else {})}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SparseExpertLinear:
        """An empty module to load a state dict into. A spec without "format" was written before
        the experts were kept compressed: its tensors are converted while loading."""
        k, out, d = int(spec["num_experts"]), int(spec["out_features"]), int(spec["in_features"])
        router = Router(d, int(spec["pca_dim"]), k)
        experts = CompressedExperts.from_spec({
            "num_experts": k, "out_features": out, "in_features": d, "bias": bool(spec["bias"]),
            "format": spec.get("format", "bitmask"), "value_dtype": spec.get("value_dtype", "float32"),
            "stored_values": spec.get("stored_values", 0), "group_size": spec.get("group_size")})
        return cls(router, experts)

    # --- compute ------------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Expert labels for x [..., in] -> [...]; reused when the shared router last routed this very tensor."""
        return route_once(self.router, x).view(x.shape[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = route_once(self.router, x)
        if self._dense is None:  # .forward, not a second module call: no hook dispatch per decode step
            return self.experts.forward(x, labels)
        return self._dense_forward(x, labels)

    def _dense_forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        weights = self._dense.to(flat.dtype) if self._dense.dtype != flat.dtype else self._dense
        out = routed_matmul(flat, labels.reshape(-1), weights)
        if self.bias is not None:
            out += self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def use_dense_weights(self, dense: bool = True) -> SparseExpertLinear:
        """Also hold the experts uncompressed (k x the dense layer, in the value dtype) and compute
        with torch matmuls; `False` drops that copy again. The saved state stays compressed."""
        self._dense = self.dense_experts().to(self.value_dtype) if dense else None
        return self

    @property
    def uses_dense_weights(self) -> bool:
        return self._dense is not None

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .float(): the dense copy follows the buffers
        super()._apply(fn, recurse)
        if self._dense is not None:
            self._dense = fn(self._dense)
        return self

    def dense_experts(self) -> torch.Tensor:
        """The experts as one dense float32 tensor [k, out, in] (exact: every stored value is a float32)."""
        return self.experts.dense_weight()

    def to_storage_dtype(self, dtype: torch.dtype, keep_values: bool = True) -> SparseExpertLinear:
        """Expert values in `dtype`; the router and the bias stay float32, so routes do not depend on it.
        `keep_values` as in CompressedExperts.to_storage_dtype."""
        self.experts.to_storage_dtype(dtype, keep_values)
        if self._dense is not None:
            self._dense = self._dense.to(dtype)
        return self

    # --- costs --------------------------------------------------------------------------------
    def expert_nonzeros(self) -> list[int]:
        return self.experts.expert_nonzeros()

    def flops_per_token(self) -> int:
        """A token runs one expert (2 x its non-zeros; the mean over experts) plus the router. A
        router shared with another module is counted once by evaluate.model_costs."""
        return self.experts.flops_per_token() + self.router.flops_per_token()

    def nonzeros(self) -> int:
        """Stored non-zeros: every expert, plus the router's buffers."""
        return sum(self.expert_nonzeros()) + router_nonzeros(self.router)

    def shared_costs(self) -> dict[str, tuple[nn.Module, int, int]]:
        """Parts of this module's cost another module may share: name -> (part, FLOPs, non-zeros)."""
        return {"router": (self.router, self.router.flops_per_token(), router_nonzeros(self.router))}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, experts={self.num_experts}, "
                f"pca_dim={self.pca_dim}, format={self.experts.format}, values={self.experts.value_type}"
                f"{', dense copy' if self._dense is not None else ''}")


# torch >= 2.10 everywhere; from 2.8 under its private name, on CUDA only
_PUBLIC_GROUPED_MM = getattr(torch.nn.functional, "grouped_mm", None)
_GROUPED_MM = _PUBLIC_GROUPED_MM or getattr(torch, "_grouped_mm", None)
_GROUPED_MM_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def routed_matmul(x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, *,
                  grouped: bool | None = None) -> torch.Tensor:
    """x [n, in] times the transpose of its token's expert, weights[labels[t]] ([k, out, in]) -> [n, out].

    Tokens are sorted by expert once, multiplied group by group and unsorted once. With `grouped`
    (default: where torch has `grouped_mm` and the rows meet its 16-byte alignment) the groups are
    one grouped GEMM whose group ends stay on the device: on a GPU one kernel and no host sync per
    linear, where one matmul per expert needs the counts on the host and launches k kernels. On the
    CPU a run of one expert skips the sort (the check is a host read, free there). Both ways give
    the same bits on the CPU (tests/expand/test_expand.py)."""
    k, out_features = weights.shape[0], weights.shape[1]
    if grouped is None:
        grouped = grouped_mm_fits(x, weights)
    if x.shape[0] == 0:
        return x.new_empty(0, out_features)
    if k == 1 or (x.is_cpu and (x.shape[0] == 1 or bool((labels == labels[0]).all()))):
        return x @ weights[0 if k == 1 else int(labels[0])].t()  # one expert: no gather at all
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    if grouped:
        ends = counts.cumsum(0).to(torch.int32)
        sorted_out = _GROUPED_MM(x.index_select(0, order), weights.transpose(1, 2), offs=ends)
    else:
        chunks = torch.split(x.index_select(0, order), counts.tolist())
        sorted_out = torch.cat([chunk @ weights[e].t() for e, chunk in enumerate(chunks) if chunk.shape[0]])
    out = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)
    return out.index_copy_(0, order, sorted_out)


def grouped_mm_fits(x: torch.Tensor, weights: torch.Tensor) -> bool:
    """Whether torch's grouped_mm takes these operands: a dtype it multiplies, rows and weight
    columns 16-byte aligned (the kernels' rule; the CPU refuses the rest too)."""
    size = x.element_size()
    return (_GROUPED_MM is not None and (x.is_cuda or _PUBLIC_GROUPED_MM is not None)
            and x.dtype in _GROUPED_MM_DTYPES and weights.dtype == x.dtype
            and (x.shape[1] * size) % 16 == 0 and (weights.shape[1] * size) % 16 == 0
            and x.stride(1) == 1 and weights.is_contiguous())


def router_nonzeros(router: Router) -> int:
    return sum(int((b != 0).sum()) for b in router.buffers())


def route_once(router: Router, x: torch.Tensor) -> torch.Tensor:
    """router(x) flattened to [tokens], remembered by the router for the last x (Router.last_route):
    a second call with the same, unmodified tensor (gate_proj and up_proj get the very same one)
    returns the same labels without computing them again."""
    labels = router.last_route.get(x)
    if labels is None:
        labels = evaluate_router(router, x)
        router.last_route.put(x, labels)
    return labels


def evaluate_router(router: Router, x: torch.Tensor) -> torch.Tensor:
    """router(x) for x [..., in], flattened to [tokens]. A folded router (k <= pca_dim) on the CPU
    scores a few tokens in one kernel call (kernels.ops.route: the same nearest centroid, ~3 us
    instead of ~20 us of torch ops at decode)."""
    flat = x.reshape(-1, x.shape[-1])
    folded = router.folded() if x.is_cpu else None
    return router(flat) if folded is None else ops.route(flat, *folded)


def _load_legacy(module: SparseExpertLinear, state_dict: dict, prefix: str, *_args) -> None:
    """Convert a state saved before the experts were kept compressed: `expert_values` + `expert_mask`
    (pack_sparse's layout) and a `bias` parameter become the CompressedExperts' bitmask tensors.
    Only the mask is re-laid out; no dense copy is made."""
    values, packed = state_dict.pop(prefix + "expert_values", None), state_dict.pop(prefix + "expert_mask", None)
    if values is None or packed is None:
        return
    shape = (module.num_experts, module.out_features, module.in_features)
    numel = shape[0] * shape[1] * shape[2]
    if packed.numel() * 8 < numel:
        raise RuntimeError(f"{prefix}expert_mask holds {packed.numel() * 8} bits for {numel} weights")
    bias = state_dict.pop(prefix + "bias", None)
    try:
        weight = bitmask_from_flat_msb(values, packed, shape)
    except ValueError as error:
        raise RuntimeError(f"{prefix}expert_values do not match expert_mask: {error}") from None
    dtype = module.value_dtype
    weight = weight.with_value_dtype(dtype)
    if weight.values.data_ptr() == values.data_ptr():  # a view of the file's (memory-mapped) tensor: own it
        weight = dataclasses.replace(weight, values=weight.values.clone())
    experts = CompressedExperts(weight, None if bias is None else bias.float())
    module.experts = experts.to(module.router.mean.device)
    for name, tensor in experts.state_dict().items():
        state_dict[prefix + "experts." + name] = tensor

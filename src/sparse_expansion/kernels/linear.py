"""nn.Modules holding compressed weights as buffers: a linear, and k stacked routed experts.

The buffers are the format's own tensors (formats.py), so `state_dict()` is what a
safetensors file stores and `from_spec(spec())` allocates exactly the buffers to load it into.
Outputs come back in the input's dtype; the kernels compute in fp32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import ops
from .formats import CompressedWeight, choose_format, compress, parse_format, value_dtype_of


class _Compressed(nn.Module):
    """Shared by both modules: buffers <-> CompressedWeight, spec, non-zero counts."""

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.format = weight.format
        self.weight_shape = tuple(weight.shape)
        self.bits, self.group_size = weight.bits, weight.group_size
        for name, tensor in weight.tensors().items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._weight: CompressedWeight | None = None
        self.register_load_state_dict_post_hook(_validate_after_load)

    @property
    def in_features(self) -> int:
        return self.weight_shape[-1]

    @property
    def out_features(self) -> int:
        return self.weight_shape[-2]

    def compressed(self) -> CompressedWeight:
        """The weight as one object, rebuilt only when a buffer was replaced (`.to()`, assignment)."""
        buffers, cached = self._buffers, self._weight
        if cached is None or cached.values is not buffers["values"] or not _same_index(cached, buffers):
            if self.format == "dense":
                parts = (buffers["values"], None)
            elif parse_format(self.format) is None:
                parts = (buffers["values"], buffers["mask"], buffers["row_offsets"])
            else:
                parts = (buffers["values"], buffers["indices"], None)
            grid = {} if self.bits is None else {"scales": buffers["scales"], "zeros": buffers["zeros"],
                                                  "bits": self.bits, "group_size": self.group_size}
            cached = self._weight = CompressedWeight(self.format, self.weight_shape, *parts, **grid)
        return cached

    def dense_weight(self) -> torch.Tensor:
        """The weight uncompressed, in fp32 (for checks and for code that needs a dense matrix)."""
        return ops.unpack(self.compressed())

    def _spec(self) -> dict[str, Any]:
        weight = self.compressed()
        spec = {"in_features": self.in_features, "out_features": self.out_features, "format": self.format,
                **{k: v for k, v in weight.spec().items() if k not in ("format", "shape")},
                "bias": self.bias is not None}
        return spec

    @property
    def value_type(self) -> str:
        """"float32", "bfloat16", "float16", "int8" or "int4"."""
        return self.compressed().value_type

    def nonzeros(self) -> int:
        """Stored non-zero weights (an N:M group's zero fillers are not counted)."""
        return self.compressed().nonzeros()

    def dense_numel(self) -> int:
        """Weights (and biases) the dense layer it stands for would hold: what `params` counts."""
        return math.prod(self.weight_shape) + (0 if self.bias is None else self.bias.numel())

    def to_storage_dtype(self, dtype: torch.dtype | str, keep_values: bool = True) -> _Compressed:
        """Values in `dtype` (float32, bfloat16 or float16); the bias stays float32, as the kernels
        take it. Called by artifact.py after loading with the model's --dtype. Quantized codes stay
        as they are (their de-quantized weights are float32 whatever the model's dtype). `keep_values`
        False: a module about to be loaded, whose values are not worth converting (nor making resident)."""
        dtype = value_dtype_of(dtype)
        if self.bits is None and self.values.dtype != dtype:
            self.values = self.values.to(dtype) if keep_values else torch.empty(self.values.shape, dtype=dtype)
        return self


def _validate_after_load(module: _Compressed, _keys) -> None:
    """After loading: the tensors must agree with each other (a module-level function, so the module
    pickles). A load that wrote none of them since the last check has nothing new to check: a model
    loaded a block at a time (artifact.load_weights) reaches every module once more at its end."""
    written = tuple((id(t), t._version) for t in module._buffers.values() if t is not None)
    if module.__dict__.get("_validated") == written:
        return
    module.compressed().validate()
    module._validated = written


def _same_index(weight: CompressedWeight, buffers: dict[str, torch.Tensor | None]) -> bool:
    if weight.quantized and (weight.scales is not buffers["scales"] or weight.zeros is not buffers["zeros"]):
        return False
    if weight.format == "dense":
        return True
    if weight.row_offsets is None:
        return weight.index is buffers["indices"]
    return weight.index is buffers["mask"] and weight.row_offsets is buffers["row_offsets"]


def _empty_weight(shape: tuple[int, ...], spec: dict[str, Any]) -> CompressedWeight:
    return CompressedWeight.empty({"format": spec["format"], "shape": shape, "value_dtype": spec["value_dtype"],
                                   "stored_values": spec.get("stored_values", 0),
                                   "group_size": spec.get("group_size")})


class CompressedLinear(_Compressed):
    """Drop-in for nn.Linear (y = x W^T + b) with W stored as bitmask or N:M."""

    artifact_type = "compressed_linear"  # its name in artifact.MODULE_TYPES

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None = None) -> None:
        if len(weight.shape) != 2:
            raise ValueError(f"CompressedLinear needs an [out, in] weight, got {list(weight.shape)}")
        super().__init__(weight, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, value_dtype: torch.dtype | str = torch.float16,
                    format: str = "auto") -> CompressedLinear:
        """Compress a linear's weight; "auto" picks 2:4 or 4:8 when the weight satisfies it, else bitmask."""
        return cls.from_dense(linear.weight, linear.bias, value_dtype, format)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   value_dtype: torch.dtype | str = torch.float16, format: str = "auto") -> CompressedLinear:
        """Compress a dense [out, in] weight; `format` as in from_linear."""
        weight = weight.detach()
        fmt = choose_format(weight) if format == "auto" else format
        return cls(compress(weight, fmt, value_dtype_of(value_dtype)), bias)

    def spec(self) -> dict[str, Any]:
        return self._spec()

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CompressedLinear:
        """An empty module with buffers shaped for `spec`, to load a state dict into."""
        shape = (int(spec["out_features"]), int(spec["in_features"]))
        bias = torch.zeros(shape[0]) if spec.get("bias") else None
        return cls(_empty_weight(shape, spec), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse_linear(x, self.compressed(), self._buffers["bias"])

    def flops_per_token(self) -> int:
        return 2 * self.nonzeros()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, "
                f"values={_values_repr(self)}, bias={self.bias is not None}")


def _values_repr(module: _Compressed) -> str:
    return module.value_type + ("" if module.bits is None else f", group_size={module.group_size}")


class CompressedExperts(_Compressed):
    """k compressed [out, in] experts stacked; token i goes through expert labels[i].

    The router is not part of it: whoever routes adds the router's FLOPs."""

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None = None) -> None:
        if len(weight.shape) != 3:
            raise ValueError(f"CompressedExperts needs a [k, out, in] weight, got {list(weight.shape)}")
        super().__init__(weight, bias)

    @property
    def num_experts(self) -> int:
        return self.weight_shape[0]

    @classmethod
    def from_dense(cls, experts: torch.Tensor, bias: torch.Tensor | None = None,
                   value_dtype: torch.dtype | str = torch.float16, format: str = "auto") -> CompressedExperts:
        """Compress stacked dense experts [k, out, in]; "auto" as in CompressedLinear.from_linear."""
        fmt = choose_format(experts) if format == "auto" else format
        return cls(compress(experts.detach(), fmt, value_dtype_of(value_dtype)), bias)

    def spec(self) -> dict[str, Any]:
        return {**self._spec(), "num_experts": self.num_experts}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CompressedExperts:
        shape = (int(spec["num_experts"]), int(spec["out_features"]), int(spec["in_features"]))
        bias = torch.zeros(shape[1]) if spec.get("bias") else None
        return cls(_empty_weight(shape, spec), bias)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ops.expert_linear(x, labels, self.compressed(), self._buffers["bias"])

    def expert_nonzeros(self) -> list[int]:
        weight = self.compressed()
        return [weight.expert(e).nonzeros() for e in range(self.num_experts)]

    def flops_per_token(self) -> int:
        """A token runs one expert: 2 x its non-zeros, the mean over experts."""
        nnz = self.expert_nonzeros()
        return round(2 * sum(nnz) / len(nnz))

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format}, values={_values_repr(self)}, bias={self.bias is not None}")


# QuantizedLinear.quantize rounds this many weights at a time: an LM head (49152 x 576 on SmolLM2) in one go
# held ~6 float32 copies of itself in temporaries, the peak of a load that quantizes (storage.py).
QUANTIZE_VALUES = 1 << 22


class QuantizedLinear(_Compressed):
    """Drop-in for nn.Linear whose dense W is stored as int8 or int4 codes with per-row-and-group scales
    (formats.py, format "dense"): the linears pruning leaves dense (attention projections, the LM head)
    at a quarter or an eighth of float32's bytes. Decode steps run the C++ kernels; more tokens
    de-quantize W once and call torch's GEMM."""

    artifact_type = "quantized_linear"  # its name in artifact.MODULE_TYPES

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None = None) -> None:
        if weight.format != "dense" or not weight.quantized or len(weight.shape) != 2:
            raise ValueError("QuantizedLinear needs a quantized [out, in] weight in the dense format")
        super().__init__(weight, bias)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, bits: int,
                 group_size: int | None = None, grid: str = "minmax") -> QuantizedLinear:
        """Round-to-nearest onto the grid of every row (or row and group of `group_size` columns) that
        formats.fit_grid places by `grid` ("minmax" or "mse")."""
        from .formats import fit_grid, quantize

        rows, cols = weight.shape
        group = cols if group_size is None else min(group_size, cols)
        step = max(1, QUANTIZE_VALUES // cols)
        parts = []
        for r in range(0, rows, step):  # rows are independent: a few float32 temporaries of a slice at a time
            w = weight[r:r + step].detach().float()
            parts.append(quantize(w, "dense", bits, group, *fit_grid(w, bits, group, grid)))
        if len(parts) == 1:
            return cls(parts[0], bias)
        return cls(CompressedWeight("dense", (rows, cols), torch.cat([p.values for p in parts]), None,
                                    scales=torch.cat([p.scales for p in parts]),
                                    zeros=torch.cat([p.zeros for p in parts]), bits=bits, group_size=group), bias)

    def spec(self) -> dict[str, Any]:
        spec = self._spec()
        spec.pop("format")
        spec.pop("stored_values")
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> QuantizedLinear:
        shape = (int(spec["out_features"]), int(spec["in_features"]))
        bias = torch.zeros(shape[0]) if spec.get("bias") else None
        return cls(_empty_weight(shape, {**spec, "format": "dense"}), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse_linear(x, self.compressed(), self._buffers["bias"])

    def flops_per_token(self) -> int:
        return 2 * math.prod(self.weight_shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, values={_values_repr(self)}, "
                f"bias={self.bias is not None}")


def quantized_copy(module: _Compressed, bits: int, group_size: int | None = None,
                   grid: str = "minmax") -> _Compressed:
    """A CompressedLinear or CompressedExperts with the same sparsity, its weights rounded to the nearest
    point of a `bits`-bit grid per row (or row and group of `group_size` columns) that formats.fit_grid
    places by `grid`; already quantized modules come back as they are."""
    from .formats import decompress, fit_grid, quantize

    if module.bits is not None:
        return module
    weight = module.compressed()
    group = weight.in_features if group_size is None else min(group_size, weight.in_features)
    if weight.format == "bitmask" and grid == "minmax":  # the same codes without a dense copy
        return type(module)(ops.quantize_bitmask(weight, bits, group), module.bias)
    dense = decompress(weight).float()
    scales, zeros = fit_grid(dense, bits, group, grid)
    bias = module.bias
    return type(module)(quantize(dense, weight.format, bits, group, scales, zeros), bias)


class DecodeLinear(nn.Module):
    """An nn.Linear's weight and bias (the same Parameters: tied weights stay tied, the state dict keeps
    its keys) multiplied by `ops.dense_linear`, which runs bfloat16 decode steps through the C++
    AVX512-BF16 kernel. What `storage.set_weights` puts in place of a model's dense linears when they are
    bfloat16, so the layers that pruning left dense profit from half precision at decode too."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dense_linear(x, self.weight, self.bias)

    def to_linear(self) -> nn.Linear:
        """Back to a plain nn.Linear on the same Parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


@contextlib.contextmanager
def decode_arithmetic(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every int8 / int4 module of `model` computes as the fast decode step does
    (ops.quant_decode_linear, token by token: act8 for dense and bitmask values, exact otherwise)
    instead of de-quantizing: for measuring what the step's input rounding costs (perplexity) and for
    checking the step against a forward pass. Slow for long inputs (one matvec per token)."""
    swapped = []
    for module in model.modules():
        if not isinstance(module, _Compressed) or module.bits is None:
            continue

        def forward(x: torch.Tensor, labels: torch.Tensor | None = None, m: _Compressed = module) -> torch.Tensor:
            y = ops.quant_decode_linear(x.reshape(-1, m.in_features), m.compressed(), m.bias, labels)
            return y.reshape(*x.shape[:-1], -1).to(x.dtype)

        module.forward = forward if isinstance(module, CompressedExperts) else (lambda x, f=forward: f(x))
        swapped.append(module)
    try:
        yield model
    finally:
        for module in swapped:
            del module.forward

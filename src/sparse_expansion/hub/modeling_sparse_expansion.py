"""A sparse-expansion folder in plain transformers, with no sparse_expansion installed:

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

sparse-expansion copies this file, unchanged, into every causal-LM folder it saves with replaced
modules (an expanded model; a pruned model held compressed), and names its two classes in the
config's `auto_map`. It imports torch and transformers only (and safetensors, which transformers
requires). The model is the base architecture (`base_model_type` in config.json, e.g. a
LlamaForCausalLM) with the modules listed in `sparse_expansion.json` replaced by the pure-torch
ones below, which read the very tensors of `model.safetensors`: compressed experts are unpacked
here, one expert at a time, as tokens need them. That is portable (CPU or GPU, any dtype) but not
fast: sparse-expansion's own loader runs the same folder on its C++ kernels.

The sparse_expansion package imports this file's functions (formats, routing) for its own
pure-torch paths, so both unpack and route with one copy of the math. The transformers classes
are made on first access (module `__getattr__`), so that import stays free of transformers'
model code.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch
from torch import nn

MODEL_TYPE = "sparse_expansion"
MANIFEST_FILE = "sparse_expansion.json"
WEIGHTS_FILE = "model.safetensors"
VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ------------------------------------------------------------------------------ compressed formats
# The layouts (sparse_expansion/kernels/formats.py describes them in full): a weight [out, in] or
# [k, out, in] is R = k * out rows of `in` inputs.
#   bitmask: values [nnz] (row-major non-zeros), mask [..., ceil(in / 8)] uint8 (bit j of byte b:
#            column 8b + j, least significant bit first), row_offsets [R + 1] int64.
#   N:M:     values [..., in * N / M], indices [..., bytes] uint8: each value's position in its
#            group of M, 2 bits (M <= 4) or 4 bits, least significant bits first.


def parse_format(fmt: str) -> tuple[int, int] | None:
    """None for "bitmask", (N, M) for "N:M"; anything else is an error."""
    if fmt == "bitmask":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", fmt)
    if not match:
        raise ValueError(f"unknown compressed format {fmt!r}; use 'bitmask' or 'N:M' like '2:4'")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m <= 16:
        raise ValueError(f"N:M format {fmt!r} needs 0 < N < M <= 16")
    return n, m


def index_bits(m: int) -> int:
    """Bits per in-group position: 2 for M <= 4, else 4 (nibbles never straddle a byte)."""
    return 2 if m <= 4 else 4


_BIT = 1 << torch.arange(8, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """[R, B] uint8 -> [R, cols] bool, least significant bit first."""
    bits = (packed.unsqueeze(-1) & _BIT.to(packed.device)) != 0
    return bits.flatten(-2)[:, :cols]


def unpack_indices(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """[R, B] uint8 -> [R, count] int64: `count` fields of `bits` bits, least significant first."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).flatten(-2)[:, :count].long()


def unpack_bitmask(values: torch.Tensor, mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense weight `shape`, in the values' dtype, from a bitmask's values and mask."""
    cols = shape[-1]
    keep = unpack_bits(mask.reshape(-1, mask.shape[-1]), cols)
    dense = torch.zeros(keep.shape, dtype=values.dtype, device=values.device)
    dense.masked_scatter_(keep, values)  # fills the True positions in row-major order
    return dense.reshape(shape)


def nm_columns(indices: torch.Tensor, n: int, m: int, per_row: int) -> torch.Tensor:
    """[R, per_row] int64: the input column of every stored value of an N:M weight."""
    idx = unpack_indices(indices.reshape(-1, indices.shape[-1]), per_row, index_bits(m))
    return torch.arange(per_row, device=idx.device) // n * m + idx


def unpack_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense weight `shape`, in the values' dtype, from an N:M weight's values and indices."""
    flat = values.reshape(-1, values.shape[-1])
    dense = torch.zeros(flat.shape[0], shape[-1], dtype=values.dtype, device=values.device)
    dense.scatter_(-1, nm_columns(indices, n, m, flat.shape[1]), flat)
    return dense.reshape(shape)


def unpack(fmt: str, shape: tuple[int, ...], values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Either format; `index` is the bitmask's mask or the N:M indices."""
    nm = parse_format(fmt)
    return unpack_bitmask(values, index, shape) if nm is None else unpack_nm(values, index, *nm, shape)


# Quantized values (kernels/formats.py has the full text): `values` holds uint8 codes, one a byte
# (int8) or two a byte, low nibble first (int4); `scales` [..., groups] float32 and `zeros`
# [..., groups] uint8 give every row's group of `group_size` input columns its grid, and a stored
# code c in column j of row r stands for (c - zeros[r, j // group_size]) * scales[r, j // group_size],
# computed in float32 (one rounding: exactly the value GPTQ's asymmetric min/max grid produces).
QUANT_BITS = {"int8": 8, "int4": 4}


def unpack_codes(packed: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """[..., B] uint8 -> [..., count] int64 codes: one a byte (8 bits) or two, low nibble first (4)."""
    if bits == 8:
        return packed[..., :count].long()
    both = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)
    return both[..., :count].long()


def dequantize(codes: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 values of `codes` stored at input `columns` of flat `rows` (tensors of one shape), with
    scales/zeros [R, groups]: (code - zero) * scale, in float32."""
    groups = columns // group_size
    zero = zeros.reshape(-1, zeros.shape[-1])[rows, groups].long()
    scale = scales.reshape(-1, scales.shape[-1])[rows, groups]
    return (codes - zero).float() * scale


def unpack_quantized(fmt: str, shape: tuple[int, ...], values: torch.Tensor, index: torch.Tensor | None,
                     scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int,
                     first: int = 0) -> torch.Tensor:
    """The dense float32 weight `shape` of a quantized "bitmask", "N:M" or "dense" weight (`index`:
    the bitmask's mask, the N:M indices, None for dense). A bitmask's codes start at code `first` of
    `values` (an expert of a stacked weight: int4 codes need not start on a byte)."""
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    device = values.device
    if fmt == "dense":
        codes = unpack_codes(values.reshape(rows, -1), cols, bits)
        columns = torch.arange(cols, device=device).expand(rows, cols)
        row_ids = torch.arange(rows, device=device).unsqueeze(1).expand(rows, cols)
        return dequantize(codes, columns, row_ids, scales, zeros, group_size).reshape(shape)
    nm = parse_format(fmt)
    if nm is None:
        keep = unpack_bits(index.reshape(-1, index.shape[-1]), cols)
        row_ids, columns = keep.nonzero(as_tuple=True)  # row-major: the order values are stored in
        codes = unpack_codes(values.reshape(-1), first + row_ids.numel(), bits)[first:]
        dense = torch.zeros(rows, cols, dtype=torch.float32, device=device)
        dense[row_ids, columns] = dequantize(codes, columns, row_ids, scales, zeros, group_size)
        return dense.reshape(shape)
    n, m = nm
    per_row = cols // m * n
    codes = unpack_codes(values.reshape(rows, -1), per_row, bits)
    columns = nm_columns(index, n, m, per_row)
    row_ids = torch.arange(rows, device=device).unsqueeze(1).expand(rows, per_row)
    dense = torch.zeros(rows, cols, dtype=torch.float32, device=device)
    dense.scatter_(-1, columns, dequantize(codes, columns, row_ids, scales, zeros, group_size))
    return dense.reshape(shape)


def quantized_value_bytes(count: int, bits: int) -> int:
    """Bytes that `count` codes take."""
    return (count * bits + 7) // 8


def popcount_bytes(packed: torch.Tensor) -> torch.Tensor:
    """Set bits of every uint8 (as uint8), by bit arithmetic in place of a table lookup: indexing a table
    needs int64 indices, 8 bytes for every mask byte (a 16-expert folder: ~1.3 GB of temporaries, ~1 s)."""
    x = packed - ((packed >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F


def row_offsets_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[R + 1] int64: where every row's values start, from a [..., bytes] mask."""
    counts = popcount_bytes(mask.reshape(-1, mask.shape[-1])).sum(-1, dtype=torch.int64)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


# -------------------------------------------------------------------------------------- routing


def nearest_centroid(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """argmin_c |z - c|^2 without the |z|^2 term every centroid shares: one addmm and an argmin."""
    return torch.addmm(centroids.pow(2).sum(1), z, centroids.t(), alpha=-2).argmin(1)


def fold_router(mean: torch.Tensor, components: torch.Tensor, centroids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias [k], matrix [in, k]) with argmin(bias + x @ matrix) the nearest centroid of the PCA
    projection (x - mean) @ components: |z - c|^2 - |z|^2 = |c|^2 + 2 mean.M - 2 x.M, M =
    components @ centroids^T. Formed in float64, returned in the mean's dtype."""
    fold = components.double() @ centroids.double().t()
    bias = centroids.double().pow(2).sum(1) + 2 * (mean.double() @ fold)
    return bias.to(mean.dtype), (-2 * fold).to(mean.dtype)


def route(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor, centroids: torch.Tensor,
          folded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The expert of every token of x [tokens, in]: its PCA projection's nearest centroid, through
    `folded` (fold_router's result) when given, which pays when k <= pca_dim."""
    if folded is not None:
        bias, matrix = folded
        return torch.addmm(bias, x.to(matrix.dtype), matrix).argmin(1)
    return nearest_centroid((x.to(mean.dtype) - mean) @ components, centroids)


# ------------------------------------------------------------------------------ the replacements
# Their buffers are named as in sparse_expansion's modules, so the saved state dict loads as is.


class Router(nn.Module):
    """PCA then nearest centroid: buffers mean [in], components [in, pca_dim], centroids [k, pca_dim]."""

    def __init__(self, in_features: int, pca_dim: int, num_experts: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("components", torch.zeros(in_features, pca_dim))
        self.register_buffer("centroids", torch.zeros(num_experts, pca_dim))
        self._folded: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expert of every token of x [tokens, in] -> [tokens]."""
        folded = None
        if self.centroids.shape[0] <= self.components.shape[1]:
            key = tuple((id(t), t._version) for t in (self.mean, self.components, self.centroids))
            if self._folded is None or self._folded[0] != key:  # refolded after .to() or a write
                self._folded = (key, fold_router(self.mean, self.components, self.centroids))
            folded = self._folded[1]
        return route(x, self.mean, self.components, self.centroids, folded)


class PackedWeight(nn.Module):
    """A compressed [out, in] or [k, out, in] weight and an optional float32 bias, as saved."""

    def __init__(self, fmt: str, shape: tuple[int, ...], value_dtype: torch.dtype | str, stored_values: int,
                 bias: bool, group_size: int | None = None) -> None:
        super().__init__()
        self.format, self.shape = fmt, tuple(shape)
        rows, cols = shape[:-1], shape[-1]
        self.bits = QUANT_BITS.get(value_dtype) if isinstance(value_dtype, str) else None
        if self.bits is not None:  # quantized: uint8 codes plus the grid of every row's groups
            self.group_size = int(group_size)
            value_dtype = torch.uint8
            groups = -(-cols // self.group_size)
            self.register_buffer("scales", torch.zeros(*rows, groups))
            self.register_buffer("zeros", torch.zeros(*rows, groups, dtype=torch.uint8))
        nm = None if fmt == "dense" else parse_format(fmt)
        if fmt == "dense":
            self.register_buffer("values", torch.zeros(*rows, quantized_value_bytes(cols, self.bits),
                                                       dtype=torch.uint8))
        elif nm is None:
            if self.bits is not None:
                stored_values = quantized_value_bytes(stored_values, self.bits)
            self.register_buffer("values", torch.zeros(stored_values, dtype=value_dtype))
            self.register_buffer("mask", torch.zeros(*rows, (cols + 7) // 8, dtype=torch.uint8))
            self.register_buffer("row_offsets", torch.zeros(math.prod(rows) + 1, dtype=torch.int64))
        else:
            n, m = nm
            if cols % m:
                raise ValueError(f"{fmt} needs in_features divisible by {m}, got {cols}")
            per_row = cols // m * n
            value_count = per_row if self.bits is None else quantized_value_bytes(per_row, self.bits)
            self.register_buffer("values", torch.zeros(*rows, value_count, dtype=value_dtype))
            self.register_buffer("indices", torch.zeros(*rows, (per_row * index_bits(m) + 7) // 8,
                                                        dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(shape[-2]) if bias else None)

    def check(self, name: str) -> None:
        """After loading: the tensors must agree, so unpacking never reads past them."""
        if self.bits is not None and self.zeros.numel() and int(self.zeros.max()) >= 2 ** self.bits:
            raise ValueError(f"{name}: zero points past the {self.bits}-bit grid; the folder is corrupt")
        if self.format == "dense":
            return
        if self.format != "bitmask":
            m = parse_format(self.format)[1]
            positions = unpack_indices(self.indices.reshape(-1, self.indices.shape[-1]), self.values.shape[-1],
                                       index_bits(m))
            if bool((positions >= m).any()):
                raise ValueError(f"{name}: {self.format} indices point outside their group of {m}")
            return
        stored = int(self.row_offsets[-1])
        stored = stored if self.bits is None else quantized_value_bytes(stored, self.bits)
        if not torch.equal(self.row_offsets, row_offsets_from_mask(self.mask)) or stored != self.values.numel():
            raise ValueError(f"{name}: the bitmask's values, mask and row_offsets disagree; the folder is corrupt")

    def dense(self, expert: int | None = None) -> torch.Tensor:
        """The whole weight, or expert `expert` of a stacked one, unpacked to float32."""
        if self.bits is not None:
            return self._dequantized(expert)
        if expert is None:
            index = self.mask if self.format == "bitmask" else self.indices
            return unpack(self.format, self.shape, self.values, index).float()
        shape = self.shape[1:]
        if self.format != "bitmask":
            return unpack(self.format, shape, self.values[expert], self.indices[expert]).float()
        out = shape[0]
        start, end = int(self.row_offsets[expert * out]), int(self.row_offsets[(expert + 1) * out])
        return unpack_bitmask(self.values[start:end], self.mask[expert], shape).float()

    def _dequantized(self, expert: int | None) -> torch.Tensor:
        index = None if self.format == "dense" else self.mask if self.format == "bitmask" else self.indices
        grid = (self.bits, self.group_size)
        if expert is None:
            return unpack_quantized(self.format, self.shape, self.values, index, self.scales, self.zeros, *grid)
        if self.format != "bitmask":
            return unpack_quantized(self.format, self.shape[1:], self.values[expert],
                                    None if index is None else index[expert], self.scales[expert],
                                    self.zeros[expert], *grid)
        first = int(self.row_offsets[expert * self.shape[1]])
        return unpack_quantized(self.format, self.shape[1:], self.values, index[expert], self.scales[expert],
                                self.zeros[expert], *grid, first=first)

    def extra_repr(self) -> str:
        values = f"int{self.bits}, group_size={self.group_size}" if self.bits else str(self.values.dtype)[6:]
        return f"shape={list(self.shape)}, format={self.format}, values={values}"


class CompressedLinear(PackedWeight):
    """y = x W^T + b with W compressed ("compressed_linear" in the manifest)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.reshape(-1, x.shape[-1]).float() @ self.dense().t()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.shape[0])


class QuantizedLinear(CompressedLinear):
    """y = x W^T + b with a dense W of int8 or int4 codes ("quantized_linear" in the manifest)."""


class SparseExpertLinear(nn.Module):
    """A linear expanded into k compressed experts behind a router ("sparse_expert_linear"): every
    token goes through the expert its router picks."""

    def __init__(self, router: Router, experts: PackedWeight) -> None:
        super().__init__()
        self.router = router
        self.experts = experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, out, cols = self.experts.shape
        flat = x.reshape(-1, cols)
        labels = self.router(flat)
        y = flat.new_empty(flat.shape[0], out, dtype=torch.float32)
        for e in labels.unique().tolist():
            rows = (labels == e).nonzero().flatten()
            y[rows] = flat[rows].float() @ self.experts.dense(e).t()
        if self.experts.bias is not None:
            y = y + self.experts.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], out)


def build_module(spec: dict[str, Any], dtype: torch.dtype | None = None) -> nn.Module:
    """An empty replacement for a manifest entry, its values in `dtype` when that is a value dtype."""
    kind = spec.get("type")
    if kind == "quantized_linear":
        return QuantizedLinear("dense", (int(spec["out_features"]), int(spec["in_features"])), spec["value_dtype"],
                               0, bool(spec.get("bias")), int(spec["group_size"]))
    if kind not in ("sparse_expert_linear", "compressed_linear"):
        raise ValueError(f"module type {kind!r} is unknown to this file; load the folder with sparse-expansion")
    if "format" not in spec:
        raise ValueError("the folder was written before experts were stored compressed; re-save it with "
                         "sparse-expansion")
    value_dtype = spec["value_dtype"]
    group = spec.get("group_size")
    if value_dtype not in QUANT_BITS:  # float values: in the model's dtype when it is a value dtype
        value_dtype = dtype if dtype in VALUE_DTYPES.values() else VALUE_DTYPES[value_dtype]
    out, cols, bias = int(spec["out_features"]), int(spec["in_features"]), bool(spec.get("bias"))
    stored = int(spec.get("stored_values", 0))
    if kind == "compressed_linear":
        return CompressedLinear(spec["format"], (out, cols), value_dtype, stored, bias, group)
    k = int(spec["num_experts"])
    experts = PackedWeight(spec["format"], (k, out, cols), value_dtype, stored, bias, group)
    return SparseExpertLinear(Router(cols, int(spec["pca_dim"]), k), experts)


# --------------------------------------------------------------------------------- transformers


def base_config(raw: dict[str, Any]) -> Any:
    """The base architecture's transformers config from a guarded config.json's contents."""
    from transformers import AutoConfig

    raw = dict(raw)
    base = raw.pop("base_model_type", None)
    for key in ("model_type", "architectures", "auto_map"):
        raw.pop(key, None)
    if not isinstance(base, str):
        raise ValueError("config.json has no base_model_type; re-create the folder with sparse-expansion")
    return AutoConfig.for_model(base, **raw)


# from_pretrained arguments transformers passes along that change nothing here
_IGNORED = ("trust_remote_code", "adapter_kwargs", "_from_auto", "_from_pipeline", "_commit_hash", "code_revision",
            "low_cpu_mem_usage", "use_safetensors", "tqdm_class", "weights_only")
_HUB = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def load_pretrained(path: str, config: Any = None, **kwargs: Any) -> nn.Module:
    """The base model with its replaced modules, weights loaded strictly, in eval mode."""
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import cached_file

    hub = {key: kwargs.pop(key) for key in _HUB if kwargs.get(key) is not None}
    dtype = kwargs.pop("dtype", None)
    dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
    kwargs.pop("torch_dtype", None)
    device = kwargs.pop("device_map", None)
    if device == "auto":  # one device: the GPU when there is one (no splitting across devices)
        device = "cuda" if torch.cuda.is_available() else None
    attention = kwargs.pop("attn_implementation", None)
    for key in _IGNORED:
        kwargs.pop(key, None)
    unsupported = sorted(key for key, value in kwargs.items() if value not in (None, False, {}))
    if unsupported:
        raise ValueError(f"from_pretrained of a sparse-expansion folder does not take {', '.join(unsupported)}")
    if not (device is None or isinstance(device, (str, torch.device))):
        raise ValueError(f"device_map must name one device (or be 'auto'), got {device!r}; or load the model and "
                         "move it with .to()")

    manifest = _read_json(cached_file(path, MANIFEST_FILE, **hub))
    if manifest.get("format_version") != 2 or manifest.get("kind") != "causal_lm":
        raise ValueError(f"{path}/{MANIFEST_FILE} is not a format-2 causal_lm manifest; load it with sparse-expansion")
    if config is None or getattr(config, "model_type", None) == MODEL_TYPE:
        raw = config.to_dict() if config is not None else _read_json(cached_file(path, "config.json", **hub))
        config = base_config(raw)
    dtype = _dtype(dtype, config)
    extra = {"attn_implementation": attention} if attention else {}
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, **extra)
    for name, spec in manifest["modules"].items():
        module = build_module(spec, dtype)
        owner = spec.get("router_from")
        if owner is not None:  # the file holds a shared router once, under its first user's name
            module.router = model.get_submodule(owner).router
        model.set_submodule(name, module)
    load_model(model, cached_file(path, WEIGHTS_FILE, **hub), strict=True)
    for name in manifest["modules"]:
        module = model.get_submodule(name)
        (module.experts if isinstance(module, SparseExpertLinear) else module).check(name)
    try:
        model.generation_config = GenerationConfig.from_pretrained(path, **hub)
    except OSError:  # none saved: keep the one made from the config
        pass
    model.__class__ = _refusing_save(type(model))
    model.eval()
    return model.to(device) if device is not None else model


def _read_json(file: str) -> dict[str, Any]:
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _dtype(dtype: Any, config: Any) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a torch floating dtype or 'auto', got {dtype!r}")
    return dtype


_SUBCLASSES: dict[type, type] = {}


def _refusing_save(base: type) -> type:
    """`base` whose save_pretrained refuses: it would write a plain folder that loads with its
    replaced modules missing. Same name as `base`: transformers checks some classes by name
    (pipelines, for one)."""
    if base not in _SUBCLASSES:
        def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("a sparse-expansion model saves as its folder: copy or upload the folder it "
                                      "was loaded from, or save it with sparse_expansion.artifact.save_artifact")

        _SUBCLASSES[base] = type(base.__name__, (base,), {"save_pretrained": save_pretrained, "__module__": __name__,
                                                          "__qualname__": base.__qualname__})
    return _SUBCLASSES[base]


_CLASSES = ("SparseExpansionConfig", "SparseExpansionForCausalLM")


def __getattr__(name: str) -> Any:
    """The transformers classes, made on first access (see the module docstring)."""
    if name in _CLASSES:
        _make_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_classes() -> None:
    from transformers import PretrainedConfig, PreTrainedModel

    class SparseExpansionConfig(PretrainedConfig):
        """config.json as saved: the base model's settings, `base_model_type` naming its architecture."""

        model_type = MODEL_TYPE

        def __init__(self, base_model_type: str | None = None, **kwargs: Any) -> None:
            self.base_model_type = base_model_type
            super().__init__(**kwargs)

    class SparseExpansionForCausalLM(PreTrainedModel):
        """Only a loader: from_pretrained returns the base architecture's model (e.g. LlamaForCausalLM)
        with the replaced modules, so generate() and everything else are transformers' own."""

        config_class = SparseExpansionConfig

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise TypeError("SparseExpansionForCausalLM is not built from a config; use "
                            "AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)")

        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path: str, *args: Any, config: Any = None,
                            **kwargs: Any) -> nn.Module:
            if args:
                raise TypeError("from_pretrained takes the folder and keyword arguments only")
            return load_pretrained(str(pretrained_model_name_or_path), config, **kwargs)

    for cls in (SparseExpansionConfig, SparseExpansionForCausalLM):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls

"""How a loaded causal LM's weights sit in memory: sparse linears compressed or dense, expanded experts
compressed or with a dense copy, dense bfloat16 linears on the C++ decode path.

`models.load_model` asks here once the weights are loaded (`weights=`); `eval` and `generate` pass
their `--weights`. Loading and placement are apart so a new storage (quantized values, a fast decode
step) changes this module only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .arch import set_output_head
from .errors import UsageError
from .kernels.formats import COMPRESS_FROM_SPARSITY, GRID_METHODS, default_group_size
from .surgery import linear_from, replace

WEIGHTS = ("auto", "compressed", "dense", "int8", "int4")


def set_weights(model: nn.Module, weights: str, device: str = "cpu") -> str:
    """Put the sparse weights of a causal LM in memory as `weights` says; returns
    `weights_in_memory(model)` afterwards.

    - "compressed": every decoder-layer linear at least COMPRESS_FROM_SPARSITY sparse (a pruned
      model's) becomes a kernels.CompressedLinear with values in the model's dtype, and expanded
      experts stay compressed. The sparse kernels compute them (pure torch if they cannot build).
    - "dense": CompressedLinear back to nn.Linear; expanded experts also held dense (k x the layer).
    - "compressed" and "auto" on the CPU with the C++ kernels also run every dense bfloat16 linear
      through kernels.DecodeLinear (the same weights; a C++ path for decode steps); "dense" does not.
    - "auto": "compressed" on the CPU when the C++ kernels are available; otherwise pruned linears
      stay dense, and expanded experts stay compressed on the CPU (a dense copy would take k x the
      memory) and go dense on a GPU.
    - "int8", "int4": quantize on load (`quantize_weights`, round-to-nearest, the default group size
      and grid), then "auto". Quantized weights stay codes under every choice but "dense". (`models.
      load_model` has a folder it reads through artifact.load_weights rounded a layer at a time as it is
      read, through `quantize_while_loading`; here those layers are kept and the rest, the LM head, is rounded.)
    A model with nothing sparse keeps its weights as they are ("dense")."""
    from .arch import decoder_layers, is_linear_like, linear_weight
    from .expand.module import SparseExpertLinear
    from .kernels import CompressedLinear, ops

    if weights not in WEIGHTS:
        raise UsageError(f"unknown weights {weights!r}; use {', '.join(WEIGHTS)}")
    if weights in ("int8", "int4"):
        bits = int(weights[3:])
        quantize_weights(model, bits, default_group_size(bits))
        weights = "auto"
    experts = [m for m in model.modules() if isinstance(m, SparseExpertLinear)]
    linears: list[tuple[nn.Module, str, nn.Module]] = []  # (layer, name in it, linear)
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, CompressedLinear) or (is_linear_like(module) and _sparsity(linear_weight(module))
                                                         >= COMPRESS_FROM_SPARSITY):
                linears.append((layer, name, module))
    on_cpu = torch.device(device).type == "cpu"
    kernels = on_cpu and ops.backend() != "torch"
    for module in experts:
        dense = weights == "dense" or (weights == "auto" and not on_cpu)
        module.use_dense_weights(dense)
    compress = weights == "compressed" or (weights == "auto" and kernels)
    changed = False
    for layer, name, module in linears:
        if compress and not isinstance(module, CompressedLinear):
            dtype = linear_weight(module).dtype
            replace(layer, name, CompressedLinear.from_dense(linear_weight(module), module.bias, dtype))
            changed = True
        elif not compress and isinstance(module, CompressedLinear) and (weights == "dense" or module.bits is None):
            replace(layer, name, _dense_linear(module))
    if changed:
        _release_dense_copies(model)
    _set_decode_linears(model, weights != "dense" and kernels and ops.bf16_dot_available())
    return weights_in_memory(model)


QUANT_BITS = (8, 4)
# How round-to-nearest places its grids (formats.GRID_METHODS). "mse" rounds the weights more closely but
# loses more perplexity at int4 on SmolLM2 (BENCHMARKS.md, quantized values), so min/max stays the default.
DEFAULT_GRID = "minmax"


def quantize_weights(model: nn.Module, bits: int, group_size: int | None = None,
                     head_bits: int | None = None, grid: str = DEFAULT_GRID) -> dict[str, int]:
    """Hold every linear weight of a causal LM as `bits`-bit codes (kernels/formats.py), by round-to-nearest
    onto an asymmetric grid per row (`group_size` None) or per row and `group_size` input columns, placed
    by `grid` (formats.fit_grid: "minmax", the default, spans each group's min/max range; "mse" clips it
    where rounding loses least):

    - decoder-layer linears at least COMPRESS_FROM_SPARSITY sparse (pruned) and CompressedLinear become a
      quantized CompressedLinear (bitmask or N:M, the same zeros), expanded experts quantized
      CompressedExperts; the other decoder-layer linears (attention projections, a dense MLP) and the LM
      head become QuantizedLinear. The token embedding stays as it is (a tied LM head is untied).
    - weights already quantized (a folder pruned or expanded with --bits 4 / 8) keep their grid.
    - `head_bits` (default `bits`): the LM head's width, per row when 8 (llama.cpp's 4-bit mixes keep
      the output matrix wider too: it is the one linear every token's logits come straight out of)
    Returns how many modules of each kind were quantized."""
    from .arch import decoder_layers, is_linear_like, linear_weight
    from .kernels import QuantizedLinear
    from .kernels.linear import DecodeLinear

    _check_grid(bits, group_size, grid)
    _set_decode_linears(model, False)
    counts = {"compressed": 0, "experts": 0, "dense": 0, "kept": 0}
    for layer in decoder_layers(model):
        quantize_layer(layer, bits, group_size, grid, counts)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and (is_linear_like(head) or isinstance(head, (DecodeLinear, QuantizedLinear))):
        if isinstance(head, DecodeLinear):
            head = head.to_linear()
        hb = bits if head_bits is None else head_bits
        if hb not in QUANT_BITS:
            raise UsageError(f"the LM head's width must be 8 or 4 bits, got {hb}")
        if isinstance(head, QuantizedLinear):
            counts["kept"] += 1
            replacement = head
        else:
            group = group_size if hb == bits else default_group_size(hb)
            replacement = QuantizedLinear.quantize(linear_weight(head), head.bias, hb, group, grid)
            counts["dense"] += 1
        set_output_head(model, replacement)
    _release_dense_copies(model)
    return counts


def quantize_layer(layer: nn.Module, bits: int, group_size: int | None = None, grid: str = DEFAULT_GRID,
                   counts: dict[str, int] | None = None) -> None:
    """`quantize_weights` for the linears of one decoder layer (counted into `counts`): what a load
    applies to each layer as soon as it is read (`quantize_while_loading`)."""
    from .arch import is_linear_like, linear_weight
    from .expand.module import SparseExpertLinear
    from .kernels import CompressedLinear, QuantizedLinear
    from .kernels.formats import choose_format, compress
    from .kernels.linear import quantized_copy

    _check_grid(bits, group_size, grid)
    counts = {"compressed": 0, "experts": 0, "dense": 0, "kept": 0} if counts is None else counts

    def quantized(module: nn.Module) -> nn.Module:
        if isinstance(module, CompressedLinear) or isinstance(module, QuantizedLinear):
            counts["kept" if module.bits is not None else "compressed"] += 1
            return quantized_copy(module, bits, group_size, grid) if isinstance(module, CompressedLinear) else module
        weight = linear_weight(module).detach().float()
        bias = None if module.bias is None else module.bias.detach().float()
        if _sparsity(weight) >= COMPRESS_FROM_SPARSITY:  # its float format first: the grid from the stored values
            counts["compressed"] += 1
            floats = CompressedLinear(compress(weight, choose_format(weight), torch.float32), bias)
            return quantized_copy(floats, bits, group_size, grid)
        counts["dense"] += 1
        return QuantizedLinear.quantize(weight, bias, bits, group_size, grid)

    swaps = []
    for name, module in layer.named_modules():
        if isinstance(module, SparseExpertLinear):
            counts["kept" if module.experts.bits is not None else "experts"] += 1
            module.use_dense_weights(False)
            module.experts = quantized_copy(module.experts, bits, group_size, grid)
        elif isinstance(module, (CompressedLinear, QuantizedLinear)) or is_linear_like(module):
            if not _inside_expert(layer, name):
                swaps.append((name, module))
    for name, module in swaps:
        layer.set_submodule(name, quantized(module))


def quantize_while_loading(weights: str | None) -> Callable[[nn.Module, nn.Module], None] | None:
    """For `artifact.load_artifact(..., each_block=)`: with "int8" / "int4" storage, each decoder layer is
    rounded (`quantize_layer`, the default group size and grid) as soon as its weights are read, so the
    float weights of one layer, not of the whole model, sit beside the codes (a float 16-expert folder
    would otherwise peak at its float size plus its codes). The same codes as quantizing after the load;
    `set_weights` then quantizes the rest (the LM head) and keeps these."""
    if weights not in ("int8", "int4"):
        return None
    bits = int(weights[3:])
    done = [0]

    def each_block(model: nn.Module, block: nn.Module) -> None:
        from .arch import decoder_layers

        if any(block is layer for layer in decoder_layers(model)):
            quantize_layer(block, bits, default_group_size(bits))
            done[0] += 1
            if done[0] % TRIM_EVERY_LAYERS == 0:  # the float weights freed: back to the system, not kept
                release_freed_memory(collect=False)
    return each_block


# A load that quantizes hands freed memory back every this many layers: SmolLM2, 16 experts, int8 on load,
# peaked at 1.30-1.44 GB trimming every 1, 4 or 8 layers and ~1.8 GB never; every layer cost ~0.6-1.0 s more load
# (BENCHMARKS.md, decode: "Rounding while loading").
TRIM_EVERY_LAYERS = 4


def _check_grid(bits: int, group_size: int | None, grid: str) -> None:
    if bits not in QUANT_BITS:
        raise UsageError(f"quantized weights are 8 or 4 bits, got {bits}")
    if group_size is not None and group_size < 1:
        raise UsageError(f"the group size must be at least 1, got {group_size}")
    if grid not in GRID_METHODS:
        raise UsageError(f"unknown grid {grid!r}; use {' or '.join(GRID_METHODS)}")


def _inside_expert(layer: nn.Module, name: str) -> bool:
    """Whether `name` lies inside a SparseExpertLinear (its router holds no linears, but be safe)."""
    from .expand.module import SparseExpertLinear

    parts = name.split(".")
    return any(isinstance(layer.get_submodule(".".join(parts[:i])), SparseExpertLinear) for i in range(1, len(parts)))


def _set_decode_linears(model: nn.Module, on: bool) -> None:
    """Every plain bfloat16 nn.Linear (attention projections, LM head, a dense model's MLP) becomes a
    kernels.DecodeLinear on the same Parameters when `on`, and back when not: at decode the C++
    bfloat16 kernel reads half the bytes torch's CPU matvec does (benchmarks/decode/decode_speed.py)."""
    from .kernels import DecodeLinear

    swaps = [(name, module) for name, module in model.named_modules()
             if (on and type(module) is nn.Linear and module.weight.dtype == torch.bfloat16)
             or (not on and isinstance(module, DecodeLinear))]
    for name, module in swaps:
        replace(model, name, DecodeLinear(module) if on else module.to_linear())


def _release_dense_copies(model: nn.Module) -> None:
    """Let the replaced dense weights' memory go: Hugging Face leaves parameters as views of the
    memory-mapped weights file, and the whole mapping stays resident while any view lives; copying
    the parameters that remain releases it."""
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def release_freed_memory(collect: bool = True) -> None:
    """Collect garbage (unless `collect` is False) and hand freed heap pages back to the system (glibc's
    malloc_trim; elsewhere only the collection): loading converts and copies, and what it freed would
    otherwise still count in the process's resident memory."""
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sparse_folder(path: str) -> dict | None:
    """The manifest of a saved causal LM with sparse weights (pruned or expanded), else None."""
    from .artifact import CAUSAL_LM, is_artifact, read_manifest

    manifest = read_manifest(path) if is_artifact(path) else {}
    sparse = manifest.get("kind") == CAUSAL_LM and (manifest.get("modules") or manifest["record"].get("sparsity"))
    return manifest if sparse else None


def fast_dtype(path: str, device: str) -> tuple[str, str]:
    """(--dtype, why) that `generate` takes when none is given: bfloat16 for a folder with sparse weights
    on a CPU whose kernels have the AVX512-BF16 decode path (bfloat16 values decode fastest there, and
    their perplexity stayed within 1% of float32: BENCHMARKS.md, decode), else float32. Read from the
    folder's manifest (`path`: a folder, as models.resolve_model_path gives), before any weight is loaded."""
    from .kernels import ops

    if torch.device(device).type != "cpu":
        return "float32", "not on the CPU"
    if _sparse_folder(path) is None:
        return "float32", "a dense model"
    if not ops.bf16_dot_available():
        return "float32", "no AVX512-BF16 kernels on this CPU"
    return "bfloat16", "sparse weights and AVX512-BF16 kernels: bfloat16 values decode fastest"


def fast_weights(path: str, device: str) -> tuple[str, str]:
    """(--weights, why) that `generate` takes when given none: "int8" (per row, round-to-nearest, on
    load) for a folder with sparse float weights (bitmask or N:M) on a CPU whose act8 kernels run
    AVX-512 VNNI, where int8 decodes 1.3-1.6x faster than bfloat16 and its perplexity stayed within 1%
    of float32 (BENCHMARKS.md, llamacpp: SparseGPT 70% and 2:4, 4 and 16 experts); else "auto".
    Folders already holding codes keep theirs."""
    from .kernels import ops

    if torch.device(device).type != "cpu":
        return "auto", "not on the CPU"
    manifest = _sparse_folder(path)
    if manifest is None:
        return "auto", "a dense model"
    modules = (manifest.get("modules") or {}).values()
    if any(spec.get("value_dtype") in ("int8", "int4") for spec in modules):
        return "auto", "the folder already stores int8 / int4 values"
    if not ops.act8_vector_available():
        return "auto", "no AVX-512 VNNI act8 kernels on this CPU"
    return "int8", "sparse weights and VNNI act8 kernels: int8 values decode fastest within 1% of float32"


def weights_in_memory(model: nn.Module) -> str:
    """"compressed" when some weights are held compressed (CompressedLinear, or expanded experts
    without a dense copy), else "dense"."""
    from .expand.module import SparseExpertLinear
    from .kernels import CompressedLinear, QuantizedLinear

    for module in model.modules():
        if isinstance(module, (CompressedLinear, QuantizedLinear)) or (isinstance(module, SparseExpertLinear)
                                                    and not module.uses_dense_weights):
            return "compressed"
    return "dense"


def _sparsity(weight: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def _dense_linear(module: nn.Module) -> nn.Linear:
    dtype = torch.float32 if module.bits is not None else module.values.dtype
    return linear_from(module.dense_weight().to(dtype), module.bias)

"""Export a pruned model as a compressed-tensors checkpoint (the format llm-compressor writes and
vLLM reads), built with the compressed-tensors package's own config classes and compressors.

What the format can hold today (compressed-tensors 0.20, transformers 5, vLLM after March 2026):
- **Sparsity is stored dense.** compressed-tensors removed its sparse compressors (sparse-bitmask,
  sparse-24-bitmask) after 0.14, vLLM removed its 2:4 sparse kernels and the Sparse24 integration
  (vllm-project/vllm#36799, "Sparse24 models are no longer supported by vLLM"), and transformers
  requires compressed-tensors >= 0.15 and no longer reads a `sparsity_config`. llm-compressor 0.14
  itself writes a pruned model as plain dense weights with no compression config at all. A folder
  carrying a 2:4 marker would now make vLLM refuse it, so none is written: the pruned weights keep
  their zeros, stored as ordinary tensors, and any of the three loads them.
- **Quantization is stored packed.** A model pruned with `--bits B` (SparseGPT with GPTQ-style
  per-channel quantization fused in) holds weights on a per-row grid `scale * (q - zero)`. The
  export recovers each row's exact step from the weights, attaches a compressed-tensors
  `QuantizationScheme` (int, symmetric, per channel, 4 or 8 bits: see `_attach_quantization`) and
  lets its `ModelCompressor` write `weight_packed` + `weight_scale` ("pack-quantized", W4A16 or
  W8A16, the schemes vLLM's WNA16 kernels serve). Decompressing gives back the identical fp32
  weights.

The folder is a Hugging Face folder (config.json, model.safetensors, tokenizer) plus
`sparse_expansion_export.json`, the source's run record, for provenance.

Expanded models (experts behind routers) have no compressed-tensors form and are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError

FORMAT = "compressed-tensors"
PACKED = "pack-quantized"
PROVENANCE_FILE = "sparse_expansion_export.json"


def require_compressed_tensors() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise UsageError("compressed-tensors is not installed; install it with `pip install '.[export]'` "
                         "(or `pip install compressed-tensors`)") from None


def check_exportable(folder: str | Path) -> dict[str, Any]:
    """The folder's run record ({} for a plain Hugging Face folder); refuses what cannot be exported,
    before any model is loaded."""
    from ..artifact import CAUSAL_LM, is_artifact, read_manifest
    from ..models import resolve_model_path

    path = Path(resolve_model_path(str(folder)))
    if not is_artifact(path):
        return {}
    manifest = read_manifest(path)
    if manifest["kind"] != CAUSAL_LM:
        raise UsageError(f"export supports pruned language models; {folder} holds a {manifest['kind']} model")
    kinds = [spec.get("type") for spec in manifest["modules"].values()]
    if "quantized_linear" in kinds:
        raise UsageError(f"export supports pruned models; {folder} also stores {kinds.count('quantized_linear')} "
                         "dense linears as codes (convert, or --quantize-dense), which it does not write: export "
                         "the folder pruned without them, or use this one with sparse-expansion or load_model()")
    if any(kind != "compressed_linear" for kind in kinds):
        raise UsageError(f"export supports pruned models; expanded models ({folder} replaces "
                         f"{len(manifest['modules'])} linears with routed experts) have no compressed-tensors form, "
                         "use them with sparse-expansion or load_model()")
    return manifest["record"]


# ----------------------------------------------------------------------- per-channel grids


def recover_row_grid(weight: torch.Tensor, bits: int, search: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(step [out, 1], levels [out, in]) with step * levels == weight bit for bit, the levels of each
    row integers spanning at most 2^bits - 1 (the grid `scale * (q - zero)`, q in [0, 2^bits - 1],
    that `prune --bits` puts every row on), or a UsageError.

    A row's smallest non-zero |w| is `j` grid steps for some j in 1..2^bits - 1: the first j whose
    step puts the whole row on integer levels spanning at most 2^bits - 1 gives the levels; least
    squares over them estimates the step, and the float that reproduces the row exactly is searched
    among `search` neighbours either side (the weights were computed as fl(step * level), so the
    step that made them is among them).
    """
    W = weight.detach().float()
    out = W.shape[0]
    maxq = 2**bits - 1
    smallest = torch.where(W != 0, W.abs(), torch.full_like(W, float("inf"))).amin(dim=1)
    empty = torch.isinf(smallest)
    smallest = torch.where(empty, torch.ones_like(smallest), smallest)
    levels = torch.zeros_like(W)
    todo = ~empty
    for j in range(1, maxq + 1):
        if not todo.any():
            break
        rows = todo.nonzero().squeeze(1)
        step = (smallest[rows] / j).unsqueeze(1)
        lv = torch.round(W[rows] / step)
        fits = ((lv.amax(1) - lv.amin(1)) <= maxq) & ((W[rows] - lv * step).abs() <= 1e-4 * step).all(1)
        levels[rows[fits]] = lv[fits]
        todo[rows[fits]] = False
    if todo.any():
        r = int(todo.nonzero()[0, 0])
        raise UsageError(f"row {r} of a weight is not on a {bits}-bit grid; was the model pruned with --bits {bits}?")
    estimate = (W * levels).sum(1) / (levels * levels).sum(1).clamp(min=1)
    estimate = torch.where(empty, torch.ones_like(estimate), estimate)
    steps = _neighbours(estimate, search)  # [out, 2 * search + 1], nearest first
    exact = ((steps.unsqueeze(2) * levels.unsqueeze(1)) == W.unsqueeze(1)).all(dim=2)
    if not exact.any(1).all():
        r = int((~exact.any(1)).nonzero()[0, 0])
        raise UsageError(f"row {r} of a weight is not exactly on a {bits}-bit grid; cannot export it losslessly")
    scale = steps.gather(1, exact.float().argmax(1, keepdim=True))
    return scale.reshape(out, 1), levels


def _neighbours(values: torch.Tensor, count: int) -> torch.Tensor:
    """Each value followed by its `count` float neighbours below and above, interleaved (nearest first)."""
    columns = [values]
    below, above = values, values
    for _ in range(count):
        below = torch.nextafter(below, torch.zeros_like(below))
        above = torch.nextafter(above, torch.full_like(above, float("inf")))
        columns += [below, above]
    return torch.stack(columns, dim=1)


def quantized_linears(model: nn.Module, record: dict[str, Any]) -> list[str]:
    """Full module names of the linears a `--bits` run quantized (its record names them relative to
    the decoder layers: "3.mlp.up_proj")."""
    from ..arch import decoder_layers

    layers = decoder_layers(model)
    full = {module: name for name, module in model.named_modules()}
    names = []
    for key in record.get("linears") or {}:
        index, _, rest = key.partition(".")
        try:
            module = layers[int(index)].get_submodule(rest)
        except (ValueError, IndexError, AttributeError):
            module = None
        if not isinstance(module, nn.Linear):
            raise UsageError(f"the run record names a linear {key} the model lacks; re-create the folder")
        names.append(full[module])
    return names


# -------------------------------------------------------------------------------- the export


def export_compressed_tensors(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `source` (a pruned folder) to `out` in the compressed-tensors format; returns a summary
    {format, quantization, bits, linears, sparsity}. `out` is written atomically."""
    from ..io import atomic_output_dir, check_output_dir, write_json
    from ..models import load_model

    require_compressed_tensors()
    check_output_dir(out)
    record = check_exportable(source)
    bits = record.get("bits")
    model, tokenizer = load_model(str(source), weights="dense")  # a --bits 4 / 8 folder holds codes: de-quantized
    targets: list[str] = []
    width = None
    if bits:
        targets = quantized_linears(model, record)
        width = _attach_quantization(model, targets, int(bits))
    summary = {"format": FORMAT, "quantization": f"W{width}A16 {PACKED}" if bits else None, "bits": bits,
               "linears": len(targets), "sparsity": record.get("sparsity"), "method": record.get("method")}
    with atomic_output_dir(out) as tmp:
        _save(model, tokenizer, tmp)
        write_json(tmp / PROVENANCE_FILE, {"source": str(source), "export": summary, "record": record})
    return summary


def _attach_quantization(model: nn.Module, targets: list[str], bits: int) -> int:
    """Give each target linear a symmetric per-channel compressed-tensors scheme whose grid holds its
    weights exactly; returns the stored width (4 or 8 bits).

    The model's grids are asymmetric (a zero point per row), but compressed-tensors 0.20 cannot load
    an asymmetric pack-quantized checkpoint through transformers (the packed zero points do not match
    the shape it allocates), so the export uses the symmetric grid with the same step: a row whose
    levels lie in [-2^(w-1), 2^(w-1) - 1] is exact at width w. A 2-3 bit model always fits 4 bits, a
    4-7 bit model 8 bits; an 8-bit model fits only if every row's grid is centred.
    """
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    modules = dict(model.named_modules())
    grids = {name: recover_row_grid(modules[name].weight, bits) for name in targets}
    lowest = min(int(levels.min()) for _, levels in grids.values())
    highest = max(int(levels.max()) for _, levels in grids.values())
    width = next((w for w in (4, 8) if -(2 ** (w - 1)) <= lowest and highest <= 2 ** (w - 1) - 1), None)
    if width is None:
        raise UsageError(f"the {bits}-bit grids of this model use levels {lowest}..{highest}, beyond the signed "
                         "8-bit range of compressed-tensors' symmetric format; export models pruned with --bits 2 to 7")
    args = QuantizationArgs(num_bits=width, type="int", symmetric=True, strategy="channel")
    scheme = QuantizationScheme(targets=[f"re:^{name.replace('.', '[.]')}$" for name in targets], weights=args)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=PACKED,
                                quantization_status=QuantizationStatus.FROZEN)
    apply_quantization_config(model, config)
    with torch.no_grad():
        for name, (step, _) in grids.items():
            module = modules[name]
            module.weight_scale.data = step.to(module.weight_scale.dtype).reshape(module.weight_scale.shape)
    return width


def _save(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """compressed-tensors' own save sequence: compress in memory, save_pretrained, update config."""
    from compressed_tensors.compressors import ModelCompressor

    compressor = ModelCompressor.from_pretrained_model(model)
    if compressor.quantization_config is not None:
        compressor.compress_model(model)
    model.save_pretrained(folder, safe_serialization=True)
    compressor.update_config(str(folder))
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)

"""GPTQ for the linears that pruning leaves dense: the attention projections and the LM head.

`prune --bits 4` / `expand --bits 4` put the pruned MLP weights on SparseGPT's own grid, but the dense
linears stayed float, so the folder's bytes (and its decode speed) sat far from an all-int4 model's,
and `convert`'s round-to-nearest int4 of them costs +40% perplexity where GPTQ costs a few percent.
`--quantize-dense` runs the same solve at sparsity 0 (that is GPTQ: every rounding error pushed onto
the columns not yet rounded, weighted by the inverse Hessian of the linear's inputs) on the same
calibration windows: the attention projections in the layer-sequential pass beside the pruned MLP,
the LM head afterwards on the inputs the compressed model gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import linear_weight, set_output_head
from ..errors import UsageError
from ..surgery import linear_from
from .asymmetric import asymmetric_target
from .compressors import STORED_BITS, PruneCompressor, SparseGPTConfig, prune_weight, quantized_linear
from .sparsity import Sparsity
from .stats import HessianStat


@dataclass(frozen=True)
class DenseQuantConfig:
    """How the dense linears are quantized: `bits` (4 or 8, stored as codes; None: they stay float, which only
    asymmetric calibration asks for, to give them their asymmetric targets), `group_size` columns per grid
    (None: one per row), `grid` placement, and the LM head's width `head_bits` (None: `bits`; 0: the head is
    left as it is)."""

    bits: int | None
    group_size: int | None = None
    grid: str = "minmax"
    head_bits: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in (None, *STORED_BITS):
            raise UsageError(f"--quantize-dense stores codes: give it --bits 4 or --bits 8 (got {self.bits})")
        if self.head_bits not in (None, 0, *STORED_BITS):
            raise UsageError(f"--head-bits must be 8, 4 or 0 (float head), got {self.head_bits}")

    def layer_config(self) -> SparseGPTConfig:
        return SparseGPTConfig(Sparsity(0.0), bits=self.bits, group_size=self.group_size, grid=self.grid)

    def head_config(self) -> SparseGPTConfig | None:
        from ..kernels.formats import default_group_size  # a head of another width: `convert`'s grid for it

        bits = self.bits if self.head_bits is None else self.head_bits
        if bits is None:
            return SparseGPTConfig(Sparsity(0.0))  # float: only an asymmetric target changes it
        if not bits:
            return None
        group = self.group_size if bits == self.bits else default_group_size(bits)
        return SparseGPTConfig(Sparsity(0.0), bits=bits, group_size=group, grid=self.grid)


def dense_compressor(config: DenseQuantConfig) -> PruneCompressor:
    """The engine's `rest` compressor: GPTQ of every decoder-layer linear outside the pruning targets."""
    return PruneCompressor(config.layer_config())


def quantize_head(model: nn.Module, windows: torch.Tensor, config: DenseQuantConfig, *, batch_size: int = 8,
                  device: str = "cpu", dense_outputs: list[torch.Tensor] | None = None) -> dict[str, Any] | None:
    """GPTQ the LM head on the inputs the (compressed) model gives it over `windows`, in place: the head
    becomes a QuantizedLinear (a tied head is untied; the embedding keeps its float weights). Returns the
    record (bits, group size, damping, asymmetric), or None when the head stays float.

    `dense_outputs` (asymmetric calibration: the dense model's last hidden states, engine.EngineRun) makes
    the solve aim at the dense model's logits, as the decoder linears' do (prune/asymmetric.py): the
    compressed model's last errors are the head's to work off, and no layer comes after it. It costs a
    second pass of the model, for the dense stream's head inputs (its final norm is the model's own)."""
    from ..engine import capture_head_inputs

    head_config = config.head_config()
    head = model.get_output_embeddings()
    if head_config is None or head is None:
        return None
    statistic = HessianStat()
    add = statistic.add
    if dense_outputs is not None:
        dense_inputs: list[torch.Tensor] = []
        capture_head_inputs(model, windows, dense_inputs.append, batch_size=batch_size, device=device,
                            last_outputs=dense_outputs)
        paired = iter(dense_inputs)
        add = lambda x: statistic.add(x, reference=next(paired))  # noqa: E731  (calibrate's batches, in order)
    capture_head_inputs(model, windows, add, batch_size=batch_size, device=device)
    weight = linear_weight(head).detach().float()
    cross = statistic.cross()
    if cross is not None:
        weight = asymmetric_target(weight, statistic.value(), cross, head_config.percdamp)
    bias = getattr(head, "bias", None)
    if head_config.bits is None:  # float: the target itself (a solve at sparsity 0 without a grid returns it)
        set_output_head(model, linear_from(weight.to(linear_weight(head).dtype), bias))
        return {"bits": None, "group_size": None, "asymmetric": cross is not None}
    new, info = prune_weight(head_config, weight, statistic.value())
    set_output_head(model, quantized_linear(new, bias, info.pop("grid")))
    return {"bits": head_config.bits, "group_size": head_config.group_size, **info, "asymmetric": cross is not None}

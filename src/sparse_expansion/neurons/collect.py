"""Stream a corpus through a model and keep the inputs of each layer's neuron projections at a
fixed, seeded sample of token positions.

Memory is set by two knobs, never by the corpus: `tokens` (positions kept per layer) and
`memory_mb` (how many layers' buffers one pass may hold; more layers mean more passes, each pass
stopping right after its last layer). Inputs, not outputs, are kept: a neuron's pre-activation
output is w·x + b, so it is recomputed exactly from the input for every neuron of every
projection sharing that input (gate_proj and up_proj share one), at a fifth of the memory.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from ..arch import architecture_of, decoder_layers, linear_weight
from ..errors import UsageError
from ..progress import progress_bar
from ..surgery import StopForward, flat_inputs, hooks, layer_site


def neuron_projections(model: nn.Module) -> tuple[str, ...]:
    """The MLP input projections whose rows are neurons; they all read the same input."""
    arch = architecture_of(model)
    if not arch.neuron_projections:
        raise UsageError(f"model type '{model.config.model_type}' has no dense MLP neurons (its MLPs are mixtures of "
                         "fused experts); run neurons on a dense model")
    return arch.neuron_projections


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """'all' / None, or a comma list of indices and ranges ('0,5,10-12'); negative counts from the end."""
    if spec is None or spec.strip().lower() == "all":
        return list(range(num_layers))
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                chosen.update(range(int(lo), int(hi) + 1))
            else:
                value = int(part)
                chosen.add(value % num_layers if value < 0 else value)
    except ValueError:
        raise UsageError(f"--layers '{spec}' is not a list like 0,5,10-12 or 'all'") from None
    bad = sorted(i for i in chosen if not 0 <= i < num_layers)
    if bad:
        raise UsageError(f"--layers {bad} out of range; the model has {num_layers} layers (0-{num_layers - 1})")
    return sorted(chosen)


def sample_positions(total: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """Sorted flat token positions to keep: all of them, or `tokens` drawn without replacement."""
    if tokens < 2:
        raise UsageError(f"--tokens must be at least 2 (got {tokens})")
    if tokens >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:tokens].sort().values


def plan_passes(layers: list[int], tokens: int, width: int, memory_mb: float) -> list[list[int]]:
    """Split the layers into passes whose float32 buffers (tokens x width each) fit in memory_mb."""
    per_layer = tokens * width * 4
    per_pass = max(1, int(memory_mb * 2**20 // per_layer))
    return [layers[i : i + per_pass] for i in range(0, len(layers), per_pass)]


@torch.no_grad()
def collect_inputs(model: nn.Module, windows: torch.Tensor, layers: list[int], positions: torch.Tensor,
                   *, batch_size: int = 4, progress: bool = True) -> dict[int, torch.Tensor]:
    """One pass over `windows` [n, seqlen]: the neuron projections' inputs [len(positions), in] per layer.

    Forward hooks copy only the kept positions out of each batch, so the result does not depend
    on the batch size; the forward stops after the last requested layer.
    """
    model.eval()
    blocks = decoder_layers(model)
    first = neuron_projections(model)[0]
    buffers: dict[int, torch.Tensor] = {}
    state = {"offset": 0}

    def keep(index: int, x: torch.Tensor) -> None:
        lo = state["offset"]
        a = int(torch.searchsorted(positions, lo))
        b = int(torch.searchsorted(positions, lo + x.shape[0]))
        if index not in buffers:
            buffers[index] = torch.full((len(positions), x.shape[1]), float("nan"))
        buffers[index][a:b] = x[positions[a:b] - lo].float().cpu()

    sites = {layer_site(model, i, first): flat_inputs(functools.partial(keep, i)) for i in layers}
    last = max(layers)
    device = next(model.parameters()).device
    with hooks(model, sites, stop_after=layer_site(model, last) if last + 1 < len(blocks) else None):
        bar = progress_bar(range(0, windows.shape[0], batch_size), desc=f"collect layers {layers[0]}-{last}",
                           unit="batch", disable=not progress)
        for start in bar:
            batch = windows[start : start + batch_size]
            state["offset"] = start * windows.shape[1]
            with contextlib.suppress(StopForward):
                model(batch.to(device), use_cache=False)
    return buffers


def iter_layer_inputs(model: nn.Module, windows: torch.Tensor, layers: list[int], tokens: int, *,
                      seed: int = 0, batch_size: int = 4, memory_mb: float = 512,
                      progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """(layer, inputs [kept tokens, in]) for each requested layer, in as few passes as memory allows."""
    positions = sample_positions(windows.numel(), tokens, seed)
    width = model.config.hidden_size
    for group in plan_passes(sorted(layers), len(positions), width, memory_mb):
        buffers = collect_inputs(model, windows, group, positions, batch_size=batch_size, progress=progress)
        for index in group:
            yield index, buffers.pop(index)


def projection_outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-activation outputs [tokens, neurons] of a plain linear (Linear or Conv1D), in float64."""
    weight = linear_weight(module).detach().to(torch.float64)
    y = x.to(torch.float64) @ weight.t()
    bias = getattr(module, "bias", None)
    return y + bias.detach().to(torch.float64) if bias is not None else y

"""The FPE split: each hidden neuron becomes alpha children with (fixed) masks on its inputs.

`split_and_prune(model, alpha, rule)` returns a wider copy of a trained `MaskedMLP`:
1. every chosen hidden neuron p becomes children p·alpha … p·alpha+alpha-1; child c's incoming
   weights are the parent's times a 0/1 mask `child_masks[p, c]`; its bias is b_p / alpha;
   its outgoing weights are copies of the parent's. With disjoint masks that cover the inputs
   the children's pre-activations sum to the parent's, so with an identity activation the
   wide network computes exactly its parent's function;
2. then the smallest-|w| weights in the whole network are pruned (ties broken by a seeded
   random order) until its non-zero count equals the parent's exactly;
3. the masks (split ∧ pruning) stay fixed in further training (`MaskedLinear`).

Which inputs each child keeps is the rule's business: see rules.py, the one table of split
rules (random, clause, feature, and the overlapping and dense-wide controls).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .mlp import MaskedMLP, MLPConfig, count_nonzeros
from .rules import SplitInputs, get_rule


@dataclass
class SplitInfo:
    """What the split did, for tests and reports."""

    rule: str
    alpha: int
    layers: list[int]
    child_masks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (h, alpha, d_in) bool
    nonzeros_parent: int = 0
    nonzeros_before_pruning: int = 0
    nonzeros: int = 0
    pruned: int = 0


@torch.no_grad()
def split_layer(model: MaskedMLP, layer: int, child_masks: torch.Tensor) -> MaskedMLP:
    """Widen hidden layer `layer` (0-based) by the given child masks, without pruning."""
    h, alpha, d_in = child_masks.shape
    cfg = model.config
    if cfg.hidden[layer] != h:
        raise ValueError(f"hidden layer {layer} has {cfg.hidden[layer]} neurons, masks are for {h}")
    hidden = list(cfg.hidden)
    hidden[layer] = h * alpha
    wide = MaskedMLP(MLPConfig(cfg.in_features, tuple(hidden), cfg.out_features, cfg.activation))
    for i, (src, dst) in enumerate(zip(model.layers, wide.layers)):
        if i == layer:  # incoming: split rows
            cm = child_masks.reshape(h * alpha, d_in).to(src.weight.dtype)
            parent_of = torch.arange(h).repeat_interleave(alpha)
            dst.weight.copy_(src.weight[parent_of] * cm)
            dst.mask.copy_(src.mask[parent_of] * cm)
            dst.bias.copy_(src.bias[parent_of] / alpha)
        elif i == layer + 1:  # outgoing: copy columns to every child
            parent_of = torch.arange(h).repeat_interleave(alpha)
            dst.weight.copy_(src.weight[:, parent_of])
            dst.mask.copy_(src.mask[:, parent_of])
            dst.bias.copy_(src.bias)
        else:
            dst.load_state_dict(src.state_dict())
    return wide


@torch.no_grad()
def prune_to(model: MaskedMLP, target: int, gen: torch.Generator) -> int:
    """Drop the smallest-|w| live weights (seeded tie-break) until `count_nonzeros == target`."""
    excess = count_nonzeros(model) - target
    if excess < 0:
        raise ValueError(f"model has {count_nonzeros(model)} non-zeros, fewer than the target {target}")
    if excess == 0:
        return 0
    flat = torch.cat([layer.effective_weight().abs().flatten() for layer in model.layers])
    live = torch.nonzero(flat > 0).flatten()
    if excess > len(live):
        raise ValueError(f"cannot reach {target} non-zeros by pruning weights alone")
    live = live[torch.randperm(len(live), generator=gen)]  # random order among equal magnitudes
    drop = live[torch.argsort(flat[live], stable=True)[:excess]]
    keep = torch.ones_like(flat)
    keep[drop] = 0
    start = 0
    for layer in model.layers:
        n = layer.weight.numel()
        layer.set_mask(layer.mask * keep[start : start + n].view_as(layer.weight))
        start += n
    return int(excess)


@torch.no_grad()
def split_and_prune(
    model: MaskedMLP,
    alpha: int,
    rule: str,
    layers: Sequence[int] | None = None,
    *,
    clauses: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    overlap: float = 0.5,
    prune: bool = True,
) -> tuple[MaskedMLP, SplitInfo]:
    """FPE: widen the chosen hidden layers (default all) by alpha, then prune to the parent's non-zeros.

    `clauses` (input indices per clause) is needed by the `clause` rule, which applies to the
    first hidden layer only (its inputs are the literals). `prune=False` returns the split
    before pruning (used to check exactness).
    """
    split_rule = get_rule(rule)
    if alpha < 1:
        raise ValueError(f"alpha must be ≥ 1, got {alpha}")
    layers = list(range(len(model.config.hidden))) if layers is None else sorted(set(layers))
    if split_rule.needs_clauses and layers != [0]:
        raise ValueError(f"the {rule} rule splits the first hidden layer only (its inputs are literals)")
    gen = torch.Generator().manual_seed(seed)
    inputs = SplitInputs(generator=gen, seed=seed, clauses=clauses, overlap=overlap)
    info = SplitInfo(rule=rule, alpha=alpha, layers=layers, nonzeros_parent=count_nonzeros(model))
    wide = copy.deepcopy(model)
    for layer in layers:
        incoming = wide.layers[layer]
        if incoming.in_features < alpha and split_rule.deals_inputs:
            raise ValueError(f"layer {layer} has {incoming.in_features} inputs, fewer than alpha={alpha}")
        masks = split_rule.partition(incoming.effective_weight(), alpha, inputs)
        info.child_masks[layer] = masks
        wide = split_layer(wide, layer, masks)
    info.nonzeros_before_pruning = count_nonzeros(wide)
    if prune:
        info.pruned = prune_to(wide, info.nonzeros_parent, gen)
    info.nonzeros = count_nonzeros(wide)
    return wide, info


def clause_collisions(first_layer_mask: torch.Tensor, clauses: Sequence[Sequence[int]]) -> dict:
    """How many clauses each hidden neuron reads (a literal survives in its mask), and collisions.

    Returns the mean over neurons of clauses read, of clause pairs sharing the neuron
    (the "collisions"), and the fraction of (neuron, clause) pairs where the neuron reads only
    part of the clause's literals.
    """
    m = first_layer_mask.detach() != 0  # (neurons, inputs)
    reads = torch.stack([m[:, list(c)].any(dim=1) for c in clauses], dim=1)  # (neurons, clauses)
    whole = torch.stack([m[:, list(c)].all(dim=1) for c in clauses], dim=1)
    n_read = reads.sum(dim=1).double()
    return {
        "clauses_per_neuron": float(n_read.mean()),
        "collisions_per_neuron": float((n_read * (n_read - 1) / 2).mean()),
        "partial_clause_fraction": float((reads & ~whole).double().mean()),
    }

"""The FPE split: each hidden neuron becomes alpha children with (fixed) masks on its inputs.

`expand(model, alpha, rule)` returns a wider copy of a trained `MaskedMLP`:
1. every chosen hidden neuron p becomes children p·alpha … p·alpha+alpha-1; child c's incoming
   weights are the parent's times a 0/1 mask `child_masks[p, c]`; its bias is b_p / alpha;
   its outgoing weights are copies of the parent's. With disjoint masks that cover the inputs
   the children's pre-activations sum to the parent's, so with an identity activation the
   wide network computes exactly its parent's function;
2. then the smallest-|w| weights in the whole network are pruned (ties broken by a seeded
   random order) until its non-zero count equals the parent's exactly;
3. the masks (split ∧ pruning) stay fixed in further training (`MaskedLinear`).

Rules (which inputs each child keeps):
- `random`: each parent's inputs shuffled and dealt into alpha equal groups (disjoint, cover);
- `clause`: given the task's clauses (lists of input indices), each parent's clauses are dealt
  to its children and every literal of a clause goes to that clause's child; an input used by
  two clauses goes with the first of them in the parent's order; inputs in no clause are
  dealt at random (disjoint, cover);
- `feature`: the inputs are clustered by k-means on the unit-normalised rows of the Gram
  matrix WᵀW of the layer's incoming weights (inputs read by the same neurons land together);
  one partition for all parents (disjoint, cover; a cluster may be empty);
- controls, to tell width from disjointness: `overlapping` (the random partition, plus each
  input also given to one other child with probability `overlap`) and `dense-wide` (every
  child keeps all inputs, i.e. no split mask; only the pruning decides what remains).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .mlp import MaskedMLP, MLPConfig, count_nonzeros

SPLIT_RULES = ("random", "clause", "feature")
CONTROL_RULES = ("overlapping", "dense-wide")
RULES = SPLIT_RULES + CONTROL_RULES


@dataclass
class ExpandInfo:
    """What the split did, for tests and reports."""

    rule: str
    alpha: int
    layers: list[int]
    child_masks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (h, alpha, d_in) bool
    nonzeros_parent: int = 0
    nonzeros_before_pruning: int = 0
    nonzeros: int = 0
    pruned: int = 0


def random_partition(h: int, d_in: int, alpha: int, gen: torch.Generator) -> torch.Tensor:
    """(h, alpha, d_in) bool: for every parent, its inputs dealt at random into alpha equal groups."""
    masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
    for p in range(h):
        order = torch.randperm(d_in, generator=gen)
        masks[p, torch.arange(d_in) % alpha, order] = True
    return masks


def clause_partition(
    h: int, d_in: int, alpha: int, clauses: Sequence[Sequence[int]], gen: torch.Generator
) -> torch.Tensor:
    """(h, alpha, d_in) bool: each clause's inputs go to one child; clauses dealt evenly per parent."""
    if not clauses:
        raise ValueError("the clause rule needs the task's clauses")
    masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
    for p in range(h):
        owner = torch.full((d_in,), -1, dtype=torch.long)
        order = torch.randperm(len(clauses), generator=gen).tolist()
        for slot, j in enumerate(order):
            child = slot % alpha
            for v in clauses[j]:
                if not 0 <= v < d_in:
                    raise ValueError(f"clause {j} names input {v}, outside 0..{d_in - 1}")
                if owner[v] < 0:
                    owner[v] = child
        free = torch.nonzero(owner < 0).flatten()
        free = free[torch.randperm(len(free), generator=gen)]
        start = int(torch.randint(alpha, (1,), generator=gen))
        owner[free] = (torch.arange(len(free)) + start) % alpha
        masks[p, owner, torch.arange(d_in)] = True
    return masks


def feature_partition(weight: torch.Tensor, alpha: int, seed: int) -> torch.Tensor:
    """(h, alpha, d_in) bool: k-means on the normalised rows of WᵀW, same partition for every parent."""
    from sklearn.cluster import KMeans

    w = weight.detach().to(torch.float64)
    h, d_in = w.shape
    gram = w.T @ w
    rows = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = KMeans(n_clusters=alpha, n_init=10, random_state=seed).fit_predict(rows.numpy())
    labels = torch.as_tensor(labels, dtype=torch.long)
    masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
    masks[:, labels, torch.arange(d_in)] = True
    return masks


def overlapping_partition(h: int, d_in: int, alpha: int, overlap: float, gen: torch.Generator) -> torch.Tensor:
    """The random partition, plus each input also given to one other child with probability `overlap`."""
    masks = random_partition(h, d_in, alpha, gen)
    home = masks.to(torch.long).argmax(dim=1)  # (h, d_in)
    extra = torch.rand(h, d_in, generator=gen) < overlap
    other = (home + 1 + torch.randint(alpha - 1, (h, d_in), generator=gen)) % alpha
    p_idx, i_idx = torch.nonzero(extra, as_tuple=True)
    masks[p_idx, other[p_idx, i_idx], i_idx] = True
    return masks


def child_masks_for(
    rule: str,
    weight: torch.Tensor,
    alpha: int,
    gen: torch.Generator,
    seed: int,
    clauses: Sequence[Sequence[int]] | None,
    overlap: float,
) -> torch.Tensor:
    h, d_in = weight.shape
    if rule == "random":
        return random_partition(h, d_in, alpha, gen)
    if rule == "clause":
        return clause_partition(h, d_in, alpha, clauses or [], gen)
    if rule == "feature":
        return feature_partition(weight, alpha, seed)
    if rule == "overlapping":
        return overlapping_partition(h, d_in, alpha, overlap, gen)
    if rule == "dense-wide":
        return torch.ones(h, alpha, d_in, dtype=torch.bool)
    raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")


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
def expand(
    model: MaskedMLP,
    alpha: int,
    rule: str,
    layers: Sequence[int] | None = None,
    *,
    clauses: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    overlap: float = 0.5,
    prune: bool = True,
) -> tuple[MaskedMLP, ExpandInfo]:
    """FPE: widen the chosen hidden layers (default all) by alpha, then prune to the parent's non-zeros.

    `clauses` (input indices per clause) is needed by the `clause` rule, which applies to the
    first hidden layer only (its inputs are the literals). `prune=False` returns the split
    before pruning (used to check exactness).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    if alpha < 1:
        raise ValueError(f"alpha must be ≥ 1, got {alpha}")
    layers = list(range(len(model.config.hidden))) if layers is None else sorted(set(layers))
    if rule == "clause" and layers != [0]:
        raise ValueError("the clause rule splits the first hidden layer only (its inputs are literals)")
    gen = torch.Generator().manual_seed(seed)
    info = ExpandInfo(rule=rule, alpha=alpha, layers=layers, nonzeros_parent=count_nonzeros(model))
    wide = copy.deepcopy(model)
    for layer in layers:
        incoming = wide.layers[layer]
        if incoming.in_features < alpha and rule in SPLIT_RULES + ("overlapping",):
            raise ValueError(f"layer {layer} has {incoming.in_features} inputs, fewer than alpha={alpha}")
        masks = child_masks_for(rule, incoming.effective_weight(), alpha, gen, seed, clauses, overlap)
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

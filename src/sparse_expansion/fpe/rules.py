"""Every FPE split rule in one table: which inputs of a parent neuron each of its alpha children keeps.

A rule is a partition function plus one row in RULES (name, one-line summary, what it needs from
the task). The `fpe` command's --rule choices and help, the studies' rule lists, `expand` and the
reports' row order all read RULES, so adding a rule is a function and a row here, plus its tests.
Rows are in report order.

A partition function takes the layer's incoming weights (h parents x d_in inputs, masked), alpha
and the SplitInputs, and returns an (h, alpha, d_in) bool tensor: child c of parent p keeps input
i where it is True. Draw every random number from `inputs.generator`: the split and the pruning
after it share that one seeded generator, so the order of the draws is part of the results.

Reading this module does not import torch (the CLI's --help reads it); the functions import it
when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

DENSE = "dense"  # the unsplit baseline trained beside every rule; a run label, not a rule


@dataclass(frozen=True)
class SplitInputs:
    """What a rule may read besides the weights."""

    generator: torch.Generator  # seeded; shared with the pruning that follows the split
    seed: int = 0
    clauses: Sequence[Sequence[int]] | None = None  # the task's clauses (input indices), DNF only
    overlap: float = 0.5  # the overlapping control: chance an input is also given to another child


# ------------------------------------------------------------------------------- partitions


def random_partition(weight: torch.Tensor, alpha: int, inputs: SplitInputs) -> torch.Tensor:
    """For every parent, its inputs shuffled and dealt into alpha equal groups."""
    import torch

    h, d_in = weight.shape
    masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
    for p in range(h):
        order = torch.randperm(d_in, generator=inputs.generator)
        masks[p, torch.arange(d_in) % alpha, order] = True
    return masks


def clause_partition(weight: torch.Tensor, alpha: int, inputs: SplitInputs) -> torch.Tensor:
    """Each parent's clauses dealt evenly to its children, every literal of a clause to that
    clause's child; an input in two clauses goes with the first of them in the parent's (shuffled)
    order; inputs in no clause dealt at random."""
    import torch

    clauses = inputs.clauses
    if not clauses:
        raise ValueError("the clause rule needs the task's clauses")
    h, d_in = weight.shape
    gen = inputs.generator
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


def feature_partition(weight: torch.Tensor, alpha: int, inputs: SplitInputs) -> torch.Tensor:
    """k-means (seeded by `inputs.seed`) on the unit-normalised rows of WᵀW: inputs read by the
    same neurons land in the same child. One partition for every parent; a cluster may be empty."""
    import torch
    from sklearn.cluster import KMeans

    w = weight.detach().to(torch.float64)
    h, d_in = w.shape
    gram = w.T @ w
    rows = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = KMeans(n_clusters=alpha, n_init=10, random_state=inputs.seed).fit_predict(rows.numpy())
    labels = torch.as_tensor(labels, dtype=torch.long)
    masks = torch.zeros(h, alpha, d_in, dtype=torch.bool)
    masks[:, labels, torch.arange(d_in)] = True
    return masks


def overlapping_partition(weight: torch.Tensor, alpha: int, inputs: SplitInputs) -> torch.Tensor:
    """The random partition, plus each input also given to one other child with probability
    `inputs.overlap`."""
    import torch

    gen = inputs.generator
    masks = random_partition(weight, alpha, inputs)
    h, d_in = weight.shape
    home = masks.to(torch.long).argmax(dim=1)  # (h, d_in)
    extra = torch.rand(h, d_in, generator=gen) < inputs.overlap
    other = (home + 1 + torch.randint(alpha - 1, (h, d_in), generator=gen)) % alpha
    p_idx, i_idx = torch.nonzero(extra, as_tuple=True)
    masks[p_idx, other[p_idx, i_idx], i_idx] = True
    return masks


def no_partition(weight: torch.Tensor, alpha: int, inputs: SplitInputs) -> torch.Tensor:
    """Every child keeps every input: only the pruning decides what remains."""
    import torch

    h, d_in = weight.shape
    return torch.ones(h, alpha, d_in, dtype=torch.bool)


# ------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class SplitRule:
    name: str
    partition: Callable[[torch.Tensor, int, SplitInputs], torch.Tensor]
    summary: str  # one line for --help and reports
    disjoint: bool = True  # every input edge goes to exactly one child; False marks a control
    deals_inputs: bool = True  # inputs are dealt among the children: a layer needs >= alpha inputs
    needs_clauses: bool = False  # reads the task's clauses: DNF tasks, first hidden layer only

    def applies_to(self, task_has_clauses: bool) -> bool:
        return task_has_clauses or not self.needs_clauses


RULES: dict[str, SplitRule] = {r.name: r for r in (
    SplitRule("random", random_partition, "each parent's inputs shuffled into alpha equal groups"),
    SplitRule("clause", clause_partition, "all literals of a clause go to one child (DNF tasks only)",
              needs_clauses=True),
    SplitRule("feature", feature_partition,
              "k-means on the rows of W^T W: inputs read by the same neurons go together"),
    SplitRule("overlapping", overlapping_partition,
              "control: the random split, each input also given to a second child with prob. 0.5",
              disjoint=False),
    SplitRule("dense-wide", no_partition, "control: every child keeps every input; only pruning acts",
              disjoint=False, deals_inputs=False),
)}


def get_rule(name: str) -> SplitRule:
    """The registry row of `name` (ValueError if unknown: a programming error, not user input)."""
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown split rule {name!r}; use one of {', '.join(RULES)}") from None


def known(names: Sequence[str]) -> tuple[str, ...]:
    """`names` as a tuple, after checking each is registered (for the studies' default lists)."""
    for name in names:
        get_rule(name)
    return tuple(names)


def check_rules(names: Sequence[str], *, task: str, task_has_clauses: bool) -> tuple[str, ...]:
    """User-chosen rule names, refused in one line if unknown, repeated or not for this task."""
    names = tuple(names)
    if not names:
        raise UsageError(f"--rule needs at least one rule: {', '.join(RULES)}")
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise UsageError(f"unknown --rule {','.join(unknown)}; use {','.join(RULES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--rule names {','.join(repeated)} more than once")
    unfit = [n for n in names if not RULES[n].applies_to(task_has_clauses)]
    if unfit:
        raise UsageError(f"the {','.join(unfit)} rule needs a task with clauses (--task dnf), "
                         f"not --task {task}")
    return names


def report_order(rule: str) -> int:
    """Sort key: the dense baseline first, then the registry's order, unknown names last."""
    order = [DENSE, *RULES]
    return order.index(rule) if rule in order else len(order)

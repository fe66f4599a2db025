"""Boolean DNF tasks: label = OR of m AND-clauses of k literals over n binary inputs.

The paper does not publish n, k or its sampling, so we fix them here (see README/BENCHMARKS):
- clauses: k distinct variables each, drawn without replacement across clauses while
  m·k ≤ n (then clauses share no variable and a clause-aligned split is exact), otherwise
  each clause draws its k variables independently; each literal is negated with prob. 1/2;
- examples, exactly balanced: positives are uniform inputs with one uniformly chosen clause
  forced true (so every clause has its share of positives), negatives are uniform inputs
  that satisfy no clause (rejection sampling). Inputs are fed to the MLP as ±1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DNFTask:
    n_inputs: int
    variables: tuple[tuple[int, ...], ...]  # per clause, its k variable indices
    signs: tuple[tuple[bool, ...], ...]  # per clause, True = positive literal x_v, False = ¬x_v

    @property
    def clauses(self) -> list[list[int]]:
        """Input indices of each clause (what the clause split needs)."""
        return [list(v) for v in self.variables]

    def satisfied(self, bits: torch.Tensor) -> torch.Tensor:
        """(N, m) bool: which clauses each 0/1 input row satisfies."""
        cols = []
        for var, sgn in zip(self.variables, self.signs, strict=True):
            want = torch.tensor([1 if s else 0 for s in sgn], dtype=bits.dtype)
            cols.append((bits[:, list(var)] == want).all(dim=1))
        return torch.stack(cols, dim=1)

    def label(self, bits: torch.Tensor) -> torch.Tensor:
        return self.satisfied(bits).any(dim=1).long()


def make_task(n_inputs: int, n_clauses: int, k: int, seed: int) -> DNFTask:
    """A seeded random DNF formula (see the module docstring for how variables are drawn)."""
    if not 1 <= k <= n_inputs:
        raise ValueError(f"need 1 ≤ k ≤ n_inputs, got k={k}, n_inputs={n_inputs}")
    if n_clauses < 1:
        raise ValueError("need at least one clause")
    gen = torch.Generator().manual_seed(seed)
    variables, signs = [], []
    disjoint = n_clauses * k <= n_inputs
    pool = torch.randperm(n_inputs, generator=gen).tolist()
    for j in range(n_clauses):
        if disjoint:
            var = pool[j * k : (j + 1) * k]
        else:
            var = torch.randperm(n_inputs, generator=gen)[:k].tolist()
        variables.append(tuple(sorted(var)))
        signs.append(tuple(bool(b) for b in (torch.rand(k, generator=gen) < 0.5).tolist()))
    return DNFTask(n_inputs, tuple(variables), tuple(signs))


def sample(task: DNFTask, n_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly balanced examples (x in ±1 as float, y in {0,1}), shuffled; deterministic in seed."""
    if n_examples < 2 or n_examples % 2:
        raise ValueError(f"n_examples must be even and ≥ 2, got {n_examples}")
    gen = torch.Generator().manual_seed(seed)
    half = n_examples // 2
    pos = torch.randint(0, 2, (half, task.n_inputs), generator=gen)
    which = torch.randint(len(task.variables), (half,), generator=gen)
    for j, (var, sgn) in enumerate(zip(task.variables, task.signs, strict=True)):
        rows = torch.nonzero(which == j).flatten()
        if len(rows):
            pos[rows.unsqueeze(1), torch.tensor(var)] = torch.tensor([int(s) for s in sgn])
    negs: list[torch.Tensor] = []
    have, tries = 0, 0
    while have < half:
        cand = torch.randint(0, 2, (max(4 * half, 1024), task.n_inputs), generator=gen)
        cand = cand[task.label(cand) == 0]
        negs.append(cand)
        have += len(cand)
        tries += 1
        if tries > 1000:
            raise ValueError("this formula is almost always true; use fewer clauses or longer ones")
    neg = torch.cat(negs)[:half]
    bits = torch.cat([pos, neg])
    y = torch.cat([torch.ones(half, dtype=torch.long), torch.zeros(half, dtype=torch.long)])
    order = torch.randperm(n_examples, generator=gen)
    return (2 * bits[order] - 1).float(), y[order]

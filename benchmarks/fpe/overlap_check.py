"""How much overlap survives the parity pruning (point setting, α = 2): backs BENCHMARKS.md.

Usage: .venv/bin/python benchmarks/fpe/overlap_check.py   (≈ 10 s)
"""

import torch

from sparse_expansion.fpe import dnf
from sparse_expansion.fpe.mlp import MaskedMLP, MLPConfig, MLPTrainConfig, train_epochs
from sparse_expansion.fpe.split import split_and_prune

torch.set_num_threads(1)
for seed in range(3):
    task = dnf.make_task(32, 8, 3, seed=1000 + seed)  # as in the point study
    x, y = dnf.sample(task, 4000, 2000 + seed)
    torch.manual_seed(seed)
    parent = MaskedMLP(MLPConfig(32, (8,), 1))
    tc = MLPTrainConfig(lr=6e-3, batch_size=256)
    train_epochs(parent, x, y, 30, tc, torch.Generator().manual_seed(seed))
    literal = torch.zeros(32, dtype=torch.bool)
    literal[[v for c in task.clauses for v in c]] = True
    for rule in ("overlapping", "random", "dense-wide"):
        wide, info = split_and_prune(parent, 2, rule, clauses=task.clauses, seed=seed)
        held = wide.layers[0].mask.view(8, 2, 32).sum(1)  # children holding each parent edge
        print(
            f"seed {seed} {rule:12s} shared before pruning {(info.child_masks[0].sum(1) > 1).float().mean():.2f}"
            f" after {(held > 1).float().mean():.2f}; parent edges still read {(held > 0).float().mean():.2f}"
            f" (literal edges {(held > 0)[:, literal].float().mean():.2f}); pruned {info.pruned}"
        )

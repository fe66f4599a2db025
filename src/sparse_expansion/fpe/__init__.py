"""FPE — fixed parameter expansion (Kong et al., arXiv 2510.04500; docs/METHODS.md, FPE).

Split each hidden neuron into alpha children with disjoint input masks, prune back to the
parent's exact non-zero count, keep the masks fixed while training continues.

Where things are:
- rules.py    the split rules (one table: name -> partition function, summary, what it needs)
- split.py    `split_and_prune(mlp, alpha, rule)`: split, then prune to the parent's non-zeros
- mlp.py      `MaskedMLP` (artifact kind "fpe_mlp") and its small training loop
- schedule.py warm up a dense parent -> split by every rule -> train on
- studies.py  what each study is: tasks, DNF study table, `FPEStudyConfig` (one `fpe` run) and its checks
- run.py      `run_study(FPEStudyConfig, out=...)`: runs a study, writes results, report, plots, models
- dnf.py, embeddings.py, real.py: the tasks; report.py: tables, plots, report text

The names below are imported on first use, so reading the registries (the CLI's --help) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RULES": ".rules",
    "SplitRule": ".rules",
    "SplitInfo": ".split",
    "clause_collisions": ".split",
    "split_and_prune": ".split",
    "MLPConfig": ".mlp",
    "MaskedLinear": ".mlp",
    "MaskedMLP": ".mlp",
    "count_nonzeros": ".mlp",
    "FPEStudyConfig": ".studies",
    "run_study": ".run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)

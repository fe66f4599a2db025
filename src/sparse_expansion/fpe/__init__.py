"""FPE — fixed parameter expansion (Kong et al., arXiv 2510.04500; DESIGN.md §5).

Split each hidden neuron into alpha children with disjoint input masks, prune back to the
parent's exact non-zero count, keep the masks fixed while training continues.
"""

from .mlp import MaskedLinear, MaskedMLP, MLPConfig, count_nonzeros
from .split import RULES, ExpandInfo, clause_collisions, expand

__all__ = [
    "RULES",
    "ExpandInfo",
    "MLPConfig",
    "MaskedLinear",
    "MaskedMLP",
    "clause_collisions",
    "count_nonzeros",
    "expand",
]

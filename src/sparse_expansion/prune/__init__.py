"""One-shot pruning: magnitude, Wanda, SparseGPT (pure tensor functions + engine compressors)."""

from .compressors import MagnitudeConfig, PruneCompressor, SparseGPTConfig, WandaConfig
from .magnitude import magnitude_prune
from .sparsegpt import sparsegpt_solve
from .sparsity import Sparsity, parse_sparsity
from .wanda import wanda_prune

__all__ = ["MagnitudeConfig", "PruneCompressor", "SparseGPTConfig", "Sparsity", "WandaConfig", "magnitude_prune",
           "parse_sparsity", "sparsegpt_solve", "wanda_prune"]

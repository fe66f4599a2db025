"""Sparse Expansion: each MLP linear becomes k SparseGPT experts chosen per token by a router."""

from .compressor import ExpandCompressor, ExpandConfig, budget_sparsity
from .module import SparseExpertLinear
from .router import Router, default_pca_dim, fit_pca, kmeans

__all__ = ["ExpandCompressor", "ExpandConfig", "budget_sparsity", "Router", "SparseExpertLinear", "default_pca_dim",
           "fit_pca", "kmeans"]

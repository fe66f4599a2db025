"""sparse_expansion: widen neural networks sparsely to untangle their neurons, and measure it."""

__version__ = "0.1.0"

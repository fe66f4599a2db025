"""Pure metric functions shared across methods (entanglement, polysemanticity)."""

"""Writing models in formats other tools read (serving engines, hubs)."""

"""Folders that plain transformers loads with trust_remote_code=True.

`modeling_sparse_expansion.py` (torch and transformers only) is the one source: artifact.py copies
its text into every causal-LM folder with replaced modules and points config.json's `auto_map` at
its classes; kernels/formats.py and expand/router.py import its unpacking and routing functions,
so the folder's code and ours compute with the same math.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODELING_FILE = "modeling_sparse_expansion.py"
AUTO_MAP = {
    "AutoConfig": "modeling_sparse_expansion.SparseExpansionConfig",
    "AutoModelForCausalLM": "modeling_sparse_expansion.SparseExpansionForCausalLM",
}


def modeling_source() -> str:
    """The text of the file every guarded folder carries."""
    return (resources.files(__package__) / MODELING_FILE).read_text(encoding="utf-8")


def write_remote_code(folder: str | Path) -> None:
    """Copy the modeling file into `folder` (its config.json needs AUTO_MAP as `auto_map`)."""
    (Path(folder) / MODELING_FILE).write_text(modeling_source(), encoding="utf-8")

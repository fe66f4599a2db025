"""The one place models are saved and loaded: safetensors + JSON, never pickles.

A folder holds the Hugging Face config, the tokenizer, `model.safetensors` and
`sparse_expansion.json` (the run record, with a format version). A pruned model is a plain
Hugging Face folder anyone can `from_pretrained`. A model whose modules were replaced (e.g. by
Sparse Expansion) also lists those modules in the record; loading rebuilds them from their specs
and then loads the weights strictly, so nothing is silently dropped or left random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .errors import UsageError
from .io import read_json, write_json

RECORD_FILE = "sparse_expansion.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class Replacement(Protocol):
    """A module that can stand in for a linear and describe itself in JSON."""

    def spec(self) -> dict[str, Any]: ...

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> nn.Module: ...


_REPLACEMENTS: dict[str, type] = {}


def register_replacement(cls: type) -> type:
    """Class decorator: lets `load_saved` rebuild modules of this type from their JSON spec."""
    _REPLACEMENTS[cls.__name__] = cls
    return cls


def replaced_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    return {
        name: {"type": type(module).__name__, **module.spec()}
        for name, module in model.named_modules()
        if type(module).__name__ in _REPLACEMENTS
    }


def save_model(model: nn.Module, tokenizer: Any, folder: str | Path, record: dict[str, Any]) -> None:
    """Write model, tokenizer and run record into `folder` (normally an atomic temp folder)."""
    from safetensors.torch import save_model as save_safetensors

    folder = Path(folder)
    replaced = replaced_modules(model)
    if replaced:
        model.config.save_pretrained(folder)
        save_safetensors(model, str(folder / WEIGHTS_FILE))
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_json(folder / RECORD_FILE, {"format_version": FORMAT_VERSION, **record,
                                      "replaced_modules": replaced})


def is_saved_by_us(path: str | Path) -> bool:
    return (Path(path) / RECORD_FILE).is_file()


def read_record(path: str | Path) -> dict[str, Any]:
    record = read_json(Path(path) / RECORD_FILE)
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION:
        raise UsageError(f"{path}/{RECORD_FILE} has format_version {version!r}, this library reads "
                         f"{FORMAT_VERSION}; re-create the folder with this version")
    return record


def load_saved(path: str | Path) -> tuple[nn.Module, Any]:
    """Rebuild exactly what `save_model` wrote; a corrupt or mismatched folder is a UsageError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from . import expand  # noqa: F401  (registers SparseExpertLinear for rebuilding)

    path = Path(path)
    record = read_record(path)
    replaced = record.get("replaced_modules") or {}
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"{weights} is missing; the folder is incomplete, re-create it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not replaced:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        else:
            config = AutoConfig.from_pretrained(path)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            for name, spec in replaced.items():
                cls = _REPLACEMENTS.get(spec.get("type"))
                if cls is None:
                    raise UsageError(f"{path}: module {name} has unknown type {spec.get('type')!r}; "
                                     "was it written by a newer sparse-expansion?")
                model.set_submodule(name, cls.from_spec(spec))
            load_safetensors(model, str(weights), strict=True)
    except UsageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot load {path}: {first[:300]}; the folder is corrupt or does not "
                         "match its config") from None
    return model.eval(), tokenizer

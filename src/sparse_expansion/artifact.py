"""The one artifact format: how every model this library makes is saved, and the one loader.

A saved model is a folder with `model.safetensors` (tensors only, never pickles) and
`sparse_expansion.json`, the manifest:

    {"format_version": 2,
     "kind": "causal_lm" | "sgatlin_lm" | "fpe_mlp",   # what to rebuild (KINDS)
     "spec": {...},       # the constructor arguments of that kind
     "modules": {...},    # causal_lm only: replaced modules, dotted name -> {"type", ...spec}
     "record": {...}}     # how it was made: method, settings, calibration, measurements

- `causal_lm` is a Hugging Face model; its `config.json` and tokenizer sit beside the manifest. A
  pruned model is therefore a plain Hugging Face folder. A model with replaced modules (Sparse
  Expansion) gets `model_type: "sparse_expansion"` in config.json (the real one moves to
  `base_model_type`), so plain transformers refuses it loudly instead of loading its replaced
  linears with random weights, unless given trust_remote_code=True: the folder also holds
  hub/modeling_sparse_expansion.py, which config.json's `auto_map` names, and which rebuilds the
  model in pure torch from the same files. This loader ignores that code and `auto_map`.
- The other kinds are our own `nn.Module`s that know their `spec()` and `from_spec(spec)`.

Both registries below map a stable name to an import path, resolved only when loading: no
module imports this one to register itself, and renaming a class does not orphan saved folders.
Loading rebuilds empty modules from specs and then loads the weights strictly, so nothing is
silently dropped or left random; a corrupt or mismatched folder is a one-line UsageError.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .hub import AUTO_MAP, write_remote_code
from .io import read_json, write_json
from .surgery import replace

MANIFEST_FILE = "sparse_expansion.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GENERATION_FILE = "generation_config.json"
FORMAT_VERSION = 2
CAUSAL_LM = "causal_lm"
GUARD_MODEL_TYPE = "sparse_expansion"

#: kind -> "module:Class" of an nn.Module with `spec()` and classmethod `from_spec(spec)`.
KINDS: dict[str, str] = {
    "sgatlin_lm": "sparse_expansion.sgatlin.transformer:Transformer",
    "fpe_mlp": "sparse_expansion.fpe.mlp:MaskedMLP",
}

#: stable type name -> "module:Class" of a module that replaces a linear inside a causal_lm.
MODULE_TYPES: dict[str, str] = {
    "sparse_expert_linear": "sparse_expansion.expand.module:SparseExpertLinear",
    "compressed_linear": "sparse_expansion.kernels.linear:CompressedLinear",
    "quantized_linear": "sparse_expansion.kernels.linear:QuantizedLinear",
}

# Format 1 named module types by class name.
_V1_MODULE_TYPES = {"SparseExpertLinear": "sparse_expert_linear"}


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _registered_name(obj: object, table: dict[str, str], attribute: str) -> str | None:
    """The registry name a class declares (class attribute), checked against the registry."""
    name = getattr(type(obj), attribute, None)
    if name is None:
        return None
    cls = type(obj)
    if table.get(name) != f"{cls.__module__}:{cls.__qualname__}":
        raise ValueError(f"{cls.__qualname__} declares {attribute}={name!r}, which the registry in "
                         f"artifact.py does not map to it; add it there")
    return name


def replaced_modules(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every registered replacement module inside `model`: dotted name -> {"type", ...spec}.

    A replacement that holds a submodule listed in its class's `shareable` (a SparseExpertLinear's
    router) which an earlier replacement holds too gets `"<part>_from": "<earlier name>"`: the
    weights file stores that part once, and loading gives both modules the same object again."""
    out = {}
    owners: dict[int, str] = {}
    for name, module in model.named_modules():
        kind = _registered_name(module, MODULE_TYPES, "artifact_type")
        if kind is None:
            continue
        out[name] = {"type": kind, **module.spec()}
        for part in getattr(type(module), "shareable", ()):
            owner = owners.setdefault(id(getattr(module, part)), name)
            if owner != name:
                out[name][f"{part}_from"] = owner
    return out


# --------------------------------------------------------------------------------------- saving


def save_artifact(folder: str | Path, model: nn.Module, *, tokenizer: Any = None,
                  record: dict[str, Any] | None = None) -> None:
    """Write `model` (any registered kind) into `folder`, normally a temporary folder that the
    caller renames when complete (io.atomic_output_dir)."""
    from safetensors.torch import save_model as save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules: dict[str, dict[str, Any]] = {}
    if _is_hugging_face(model):
        kind, spec = CAUSAL_LM, {}
        modules = replaced_modules(model)
        if modules:
            _write_guarded_config(model, folder)
            save_safetensors(model, str(folder / WEIGHTS_FILE))
        else:
            model.save_pretrained(folder, safe_serialization=True)
    else:
        kind = _registered_name(model, KINDS, "artifact_kind")
        if kind is None:
            raise ValueError(f"{type(model).__qualname__} is not a registered artifact kind")
        spec = model.spec()
        save_safetensors(model, str(folder / WEIGHTS_FILE))
    _save_tokenizer(tokenizer, folder)
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "spec": spec, "modules": modules,
                "record": record or {}}
    write_json(folder / MANIFEST_FILE, manifest)


def _is_hugging_face(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "save_pretrained")


def _write_guarded_config(model: nn.Module, folder: Path) -> None:
    config = model.config.to_dict()
    config["base_model_type"] = config["model_type"]
    config["model_type"] = GUARD_MODEL_TYPE
    config["architectures"] = ["SparseExpansionForCausalLM"]
    config["auto_map"] = AUTO_MAP  # AutoModelForCausalLM(..., trust_remote_code=True) runs the copied file
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_remote_code(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)


# Files any one of which a Hugging Face tokenizer is loaded from.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether `folder` holds a tokenizer: a model saved without one (a random model, say) loads with None."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
    else:  # a bare `tokenizers.Tokenizer`
        tokenizer.save(str(folder / "tokenizer.json"))


# -------------------------------------------------------------------------------------- loading


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a saved folder, in the current format (format 1 is converted)."""
    manifest = read_json(Path(path) / MANIFEST_FILE)
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version == 1:
        return _from_format_1(manifest)
    if version != FORMAT_VERSION or not isinstance(manifest.get("kind"), str):
        raise UsageError(f"{path}/{MANIFEST_FILE} has format_version {version!r}, this library reads "
                         f"{FORMAT_VERSION}; re-create the folder with this version")
    return manifest


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    record = {k: v for k, v in old.items() if k not in ("format_version", "replaced_modules")}
    modules = {name: {**spec, "type": _V1_MODULE_TYPES.get(spec.get("type"), spec.get("type"))}
               for name, spec in (old.get("replaced_modules") or {}).items()}
    return {"format_version": FORMAT_VERSION, "kind": CAUSAL_LM, "spec": {}, "modules": modules,
            "record": record}


def read_record(path: str | Path) -> dict[str, Any]:
    """How a saved model was made (method, settings, calibration, measurements)."""
    return read_manifest(path)["record"]


def load_artifact(path: str | Path, dtype: torch.dtype = torch.float32,
                  each_block: Callable[[nn.Module, nn.Module], None] | None = None) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer or None), exactly as `save_artifact` wrote it. `each_block(model,
    block)` runs on each block of a causal LM as soon as its weights are read (`load_weights`;
    storage.quantize_while_loading rounds a layer to int8 / int4 there)."""
    from safetensors import SafetensorError

    path = Path(path)
    manifest = read_manifest(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"{weights} is missing; the folder is incomplete, re-create it")
    try:
        if manifest["kind"] == CAUSAL_LM:
            model, tokenizer = _load_causal_lm(path, manifest["modules"], dtype, each_block)
        else:
            model, tokenizer = _load_own_kind(path, manifest, dtype)
    except UsageError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
        raise corrupt_folder_error(path, exc) from None
    check_finite(model, str(path))
    return model.eval(), tokenizer


def corrupt_folder_error(path: str | Path, exc: BaseException, fix: str = "re-create it") -> UsageError:
    """One line naming the first line of what failed and what to do."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    return UsageError(f"cannot load {path}: {first}; the folder is corrupt or does not match its "
                      f"config, {fix}")


def _without_random_init() -> contextlib.AbstractContextManager:
    """Building a model in this context skips its random initialisation: every weight is read from
    the file right after (a strict load), so drawing them first only cost time and memory (a 1.1B
    folder: most of a 12 s load, and a 2.5 GB peak for a model that then holds 0.9 GB)."""
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # transformers 4
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _load_causal_lm(path: Path, modules: dict[str, dict[str, Any]], dtype: torch.dtype,
                    each_block: Callable[[nn.Module, nn.Module], None] | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = hugging_face_config(path)
    # Given the config, AutoTokenizer does not read config.json, whose auto_map would make it ask
    # whether to run the folder's code.
    tokenizer = AutoTokenizer.from_pretrained(path, config=config) if has_tokenizer(path) else None
    with _without_random_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # (skipped with the initialisation: a tied LM head is stored once, as the embedding)
    if (path / GENERATION_FILE).is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    if not modules and not _stored_under_model_names(model, path / WEIGHTS_FILE):
        # A plain folder whose tensors transformers renames as it reads them (fused MoE experts, GPT-NeoX,
        # multimodal Gemma 3): its own loader.
        return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype), tokenizer
    for name, spec in modules.items():
        target = MODULE_TYPES.get(spec.get("type"))
        if target is None:
            raise UsageError(f"{path}: module {name} has unknown type {spec.get('type')!r}; "
                             "was it written by a newer sparse-expansion?")
        module = _resolve(target).from_spec(spec)
        for part in getattr(type(module), "shareable", ()):
            owner = spec.get(f"{part}_from")
            if owner is not None:  # the file holds this part once, under the owner's name
                setattr(module, part, getattr(model.get_submodule(owner), part))
        if hasattr(module, "to_storage_dtype"):  # before loading: the file's tensors are cast as they are copied
            module.to_storage_dtype(dtype, keep_values=False)
        replace(model, name, module)
    load_weights(model, path / WEIGHTS_FILE, each_block)
    for module in model.modules():
        if hasattr(module, "to_storage_dtype"):  # a replacement keeps what must stay float32 (a router)
            module.to_storage_dtype(dtype)
    share_identical_parts(model, modules)
    return model, tokenizer


def load_weights(model: nn.Module, file: str | Path,
                 each_block: Callable[[nn.Module, nn.Module], None] | None = None) -> None:
    """Load a safetensors file into `model` strictly, one block at a time (each element of a ModuleList,
    a decoder layer say, then the rest): only one block's tensors are read beside the model, and the
    file is mapped only while they are, so a load peaks near the loaded size instead of twice it (the
    whole state dict beside the model, and every mapped page counted). A tensor the file stores once
    for two names (a tied LM head, a shared router) satisfies both. `each_block(model, block)` runs right
    after a block is loaded (not on the rest)."""
    from safetensors import safe_open

    file = str(file)
    with safe_open(file, framework="pt") as f:
        stored = list(f.keys())
    blocks = _outermost_list_elements(model)
    by_block: dict[str, list[str]] = {}
    for key in stored:
        by_block.setdefault(_block_of(key, blocks), []).append(key)
    not_loaded: set[str] = set()
    for block, keys in sorted(by_block.items(), key=lambda item: item[0] == ""):  # the rest last
        start = len(block) + 1 if block else 0
        with safe_open(file, framework="pt") as f:
            part = {key[start:]: f.get_tensor(key) for key in keys}
        target = model.get_submodule(block) if block else model
        loaded = target.load_state_dict(part, strict=False)
        del part
        if loaded.unexpected_keys:
            raise RuntimeError(f"unexpected key(s) in the weights: {_names(block, loaded.unexpected_keys)}")
        if block and each_block is not None and not _unfilled(target.state_dict(keep_vars=True), loaded.missing_keys):
            # Complete: nothing of it is missing. A broken block fails here, before it is changed; an incomplete
            # one is left as it is and fails below.
            check_finite(target, f"{Path(file).parent} ({block})")
            each_block(model, target)
        elif block:
            not_loaded.update(f"{block}.{key}" for key in loaded.missing_keys)
        else:  # the whole model's call: every block's keys were absent from it
            not_loaded.update(key for key in loaded.missing_keys if not _block_of(key, blocks))
    expected = model.state_dict(keep_vars=True)
    # Parts the file holds nothing of were not asked for: all their keys are missing.
    not_loaded.update(key for key in expected if _block_of(key, blocks) not in by_block)
    missing = sorted(_unfilled(expected, not_loaded))
    if missing:
        raise RuntimeError(f"missing key(s) in the weights: {_names('', missing)}")


def _stored_under_model_names(model: nn.Module, file: Path) -> bool:
    """Whether every tensor of a safetensors file is named as in the model's state dict."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return set(f.keys()) <= model.state_dict().keys()


def _unfilled(state: dict[str, torch.Tensor], missing: list[str] | set[str]) -> list[str]:
    """The keys of `missing` (not read) whose tensor no read key shares: a tied LM head or a shared
    router is filled by its other name."""
    filled = {_storage_key(t) for key, t in state.items() if key not in missing} - {None}
    return [key for key in missing if _storage_key(state[key]) not in filled]


def _outermost_list_elements(model: nn.Module) -> list[str]:
    """Dotted names of the elements of every ModuleList not inside another one's element."""
    blocks: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(b + ".") for b in blocks):
            blocks.extend(f"{name}.{child}" if name else child for child, _ in module.named_children())
    return blocks


def _block_of(key: str, blocks: list[str]) -> str:
    """The block a state-dict key belongs to, "" for the rest."""
    return next((b for b in blocks if key.startswith(b + ".")), "")


def _storage_key(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]] | None:
    """Equal for two names of one tensor (tied or shared); None for an empty tensor, which has no storage
    to share."""
    return (tensor.data_ptr(), tensor.numel(), tuple(tensor.shape)) if tensor.numel() else None


def _names(block: str, keys: list[str]) -> str:
    shown = [f"{block}.{k}" if block else k for k in list(keys)[:4]]
    return ", ".join(shown) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def share_identical_parts(model: nn.Module, modules: dict[str, dict[str, Any]]) -> None:
    """Folders written before parts were shared hold two equal copies (gate_proj's and up_proj's
    router): replacements under the same parent whose shareable parts are equal get one object,
    which computes exactly what either copy did."""
    for name, spec in modules.items():
        module = model.get_submodule(name)
        parent = name.rpartition(".")[0]
        for part in getattr(type(module), "shareable", ()):
            if f"{part}_from" in spec:
                continue
            mine = getattr(module, part)
            for other in modules:
                if other == name:
                    break
                if other.rpartition(".")[0] != parent or not hasattr(model.get_submodule(other), part):
                    continue
                theirs = getattr(model.get_submodule(other), part)
                if theirs is not mine and _equal_state(theirs, mine):
                    setattr(module, part, theirs)
                    break


def _equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def hugging_face_config(path: str | Path) -> Any:
    """The model's transformers config, undoing the guard a folder with replaced modules carries
    (the same function the folder's own modeling file uses)."""
    from transformers import AutoConfig

    from .hub.modeling_sparse_expansion import base_config

    raw = read_json(Path(path) / CONFIG_FILE)
    if raw.get("model_type") != GUARD_MODEL_TYPE:
        return AutoConfig.from_pretrained(path)
    if not isinstance(raw.get("base_model_type"), str):
        raise UsageError(f"{path}/{CONFIG_FILE} has no base_model_type; re-create the folder")
    return base_config(raw)


def _load_own_kind(path: Path, manifest: dict[str, Any], dtype: torch.dtype) -> tuple[nn.Module, Any]:
    target = KINDS.get(manifest["kind"])
    if target is None:
        raise UsageError(f"{path}: unknown kind {manifest['kind']!r}; was it written by a newer "
                         "sparse-expansion?")
    model = _resolve(target).from_spec(manifest["spec"]).to(dtype)
    load_weights(model, path / WEIGHTS_FILE)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    return model, tokenizer


def check_finite(model: nn.Module, where: str) -> None:
    """Refuse weights holding NaN or Inf: every number computed from them would be meaningless."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise UsageError(f"{where}: tensor {name} holds NaN or Inf values; the weights are broken, "
                             "re-create or re-download the model")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite. A NaN or Inf anywhere makes the sum NaN or Inf, so a finite sum
    (one pass, no temporary) settles it; only a sum that overflows takes the exact elementwise check,
    which writes a bool per value (~1 s over a 16-expert folder's values)."""
    total = tensor.detach().sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())

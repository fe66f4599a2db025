"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist setup.sh unpacked) on a
Hugging Face folder, with its own gguf-py. It needs torch and transformers, so our python runs it.

    python convert_gguf.py LLAMA_CPP_SOURCES HF_FOLDER --outfile OUT.gguf --outtype f16 [--pre smollm]
        [--after SITE_PACKAGES]

--after appends a folder to the import path after ours: the peer venv's site-packages, for the one
converter requirement our environment lacks (sentencepiece; the converter imports it even for a folder
without a tokenizer.model).

--pre names the BPE pre-tokenizer when the converter does not recognise the folder's tokenizer by its
hash (it knows tokenizers by the ids they give a test string, so a vocabulary cut to 32000 tokens, as
make_1b.py writes, is unknown to it although its pre-tokenizer is SmolLM2's): the converter's own
answer is used whenever it has one. A folder whose config.json names no `architectures` (our converted
SmolLM2 folder: transformers writes none for a model built from a GGUF) is given the causal-LM class of
its model_type in a staging folder of links, and a tied matrix saved as lm_head.weight is renamed to the
embedding there (else the GGUF has no token_embd and llama.cpp refuses it); the folder is never changed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def tied_under_head_name(folder: Path, config: dict) -> bool:
    """A tied model whose one shared matrix was saved as lm_head.weight (safetensors' save_model keeps one
    name of a shared tensor): the converter looks for the embedding and would write no token_embd."""
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not config.get("tie_word_embeddings") or not path.is_file():
        return False
    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())
    return "lm_head.weight" in names and "model.embed_tokens.weight" not in names


def staged(folder: Path, stage: Path) -> Path:
    """`folder`, or a staging folder of links to its files beside what the converter needs changed: a
    config.json that names the architecture, the tied matrix under the embedding's name."""
    config = json.loads((folder / "config.json").read_text())
    names_arch = bool(config.get("architectures"))
    tied = tied_under_head_name(folder, config)
    if names_arch and not tied:
        return folder
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config.setdefault("architectures", [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]])
    for item in folder.iterdir():
        if item.name != "config.json" and not (tied and item.name == "model.safetensors"):
            (stage / item.name).symlink_to(item.resolve())
    (stage / "config.json").write_text(json.dumps(config, indent=2))
    if tied:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        tensors["model.embed_tokens.weight"] = tensors.pop("lm_head.weight")
        save_file(tensors, str(stage / "model.safetensors"))
    return stage


def main() -> None:
    args = sys.argv[1:]
    sources = Path(args.pop(0))
    options = {}
    for flag in ("--pre", "--after"):
        if flag in args:
            i = args.index(flag)
            options[flag] = args[i + 1]
            del args[i : i + 2]
    pre = options.get("--pre")
    if "--after" in options:
        sys.path.append(options["--after"])
    sys.path.insert(0, str(sources))
    stage = tempfile.TemporaryDirectory(prefix="convert-gguf-")
    args[0] = str(staged(Path(args[0]), Path(stage.name)))
    sys.argv = [str(sources / "convert_hf_to_gguf.py"), *args]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    if pre is not None:
        known = TextModel.get_vocab_base_pre

        def vocab_base_pre(self, tokenizer) -> str:
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                print(f"convert_gguf.py: tokenizer hash unknown to the converter; pre-tokenizer set to {pre}",
                      file=sys.stderr)
                return pre

        TextModel.get_vocab_base_pre = vocab_base_pre
    try:
        convert_hf_to_gguf.main()
    finally:
        stage.cleanup()


if __name__ == "__main__":
    main()

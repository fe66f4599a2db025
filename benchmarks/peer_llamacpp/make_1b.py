"""A randomly initialised 1.1B Llama-shaped model, as a Hugging Face folder: where bytes decide.

    python benchmarks/peer_llamacpp/make_1b.py --out runs/peer_llamacpp/llama1b [--seed 0]

TinyLlama's shape: 22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocabulary 32000, 1.10 B
parameters, weights drawn by transformers' own initialiser under `--seed`, stored in bfloat16 (2.2 GB;
llama.cpp's converter turns them into its F16 GGUF). Speed only: the weights mean nothing, so a
perplexity of this model says nothing either. At 2.2 GB (bf16) or 0.6 GB (Q4_0) the weights do not
sit in a CPU's last-level cache, unlike SmolLM2-135M's, so decode reads them from memory every token.

The tokenizer is SmolLM2's cut to its first 32000 tokens (the ids and merges that only use them): a
prompt is text for `sparse-expansion generate` and the same ids for llama.cpp, and no id reaches past
the embedding. Its pre-tokenizer is SmolLM2's, which the GGUF names (`pre = "smollm"` in the config).
Needs ~7 GB of memory while it runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = {"num_hidden_layers": 22, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
         "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "tie_word_embeddings": False}


def cut_tokenizer(source: Path, out: Path, vocab_size: int) -> None:
    """tokenizer.json with the ids below vocab_size and the merges whose parts and result stay in them."""
    data = json.loads((source / "tokenizer.json").read_text())
    model = data["model"]
    vocab = {token: i for token, i in model["vocab"].items() if i < vocab_size}
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append(merge)
    model["vocab"], model["merges"] = vocab, merges
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < vocab_size]
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    shutil.copy(source / "tokenizer_config.json", out / "tokenizer_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty; give a new folder")

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sparse_expansion.models import shipped_model_dir

    torch.manual_seed(args.seed)
    config = LlamaConfig(**SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    cut_tokenizer(shipped_model_dir(), args.out, SHAPE["vocab_size"])
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    ids = tokenizer("To be, or not to be, that is the question").input_ids
    if len(tokenizer) > SHAPE["vocab_size"] or max(ids) >= SHAPE["vocab_size"]:
        raise SystemExit("make_1b.py: the cut tokenizer gives ids past the vocabulary")
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(args.out), "params": params, "seed": args.seed, "tokenizer_size": len(tokenizer)}))


if __name__ == "__main__":
    sys.exit(main())

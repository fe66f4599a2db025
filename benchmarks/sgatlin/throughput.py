"""Training throughput and peak memory of each FFN type at matched forward FLOPs per token.

Every configuration is d = 128, 2 layers, seq_len 128, batch 8 (the scale-1 transformer), with
the FFN sized so its forward matmul FLOPs per token match sgatlin's at scale 1 (327,680):
MLP width 640, SwiGLU width 427, MoE 16 experts of width 211 top-2, PEER 3 heads (N = 56², k = 8).
Every type of the FFN registry is measured; one without a matched size here runs at its scale-1
size (its FLOPs per token are printed beside its speed).
Each configuration runs in a fresh process with one thread: 3 warm-up steps, then timed
optimizer steps (forward, backward, clip, AdamW), like `sparse-expansion train`.

    python benchmarks/sgatlin/throughput.py [--steps 20] [--out throughput.json]
    python benchmarks/sgatlin/throughput.py --device cuda --batch-size 64   # on a GPU (issue 12)

On CUDA the step is timed after a synchronize, and the peak is the allocator's peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from sparse_expansion.resources import peak_gpu_mb, peak_rss_mb

MATCHED = {
    "mlp": {"d_ffw": 640},
    "swiglu": {"d_ffw": 427},
    "moe": {"d_ffw": 211},
    "peer": {"n_channels": 3, "n_neurons": 56**2},
    "sgatlin": {},
}


def measure(ffn: str, steps: int, device: str = "cpu", batch_size: int = 8) -> dict:
    import time

    import torch
    import torch.nn.functional as F

    from sparse_expansion.sgatlin.training import LMTrainConfig, _optimizer
    from sparse_expansion.sgatlin.transformer import Transformer, config_for_scale, count_params

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = config_for_scale(ffn, 1, vocab_size=8192, seq_len=128, **MATCHED.get(ffn, {}))
    model = Transformer(cfg).to(device)
    opt = _optimizer(model, LMTrainConfig(ffn=ffn, scale=1, budget=0))
    gen = torch.Generator().manual_seed(0)
    cuda = device.startswith("cuda")
    times = []
    for step in range(3 + steps):
        batch = torch.randint(0, 8192, (batch_size, 129), generator=gen).to(device)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - t0)
    ffn_flops = model.blocks[0].ffn.flops_per_token()
    return {"ffn": ffn, "ffn_kwargs": cfg.ffn_kwargs, "params": count_params(model),
            "ffn_flops_per_token": ffn_flops, "model_flops_per_token": model.flops_per_token(),
            "tokens_per_second": batch_size * 128 * len(times) / sum(times),
            "median_step_seconds": sorted(times)[len(times) // 2], "device": device, "batch_size": batch_size,
            "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": peak_gpu_mb(device)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.device, args.batch_size)))
        return 0
    rows = []
    from sparse_expansion.sgatlin.ffn_types import FFN_TYPES

    for ffn in FFN_TYPES:
        res = subprocess.run([sys.executable, __file__, "--one", ffn, "--steps", str(args.steps), "--device",
                              args.device, "--batch-size", str(args.batch_size)],
                             check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{ffn:8s} FFN {r['ffn_flops_per_token']:>9,} FLOPs/token  params {r['params']:>10,}"
              f"  {r['tokens_per_second']:7.0f} tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB",
              flush=True)
    print("\n| FFN | config | FFN fwd FLOPs/token | params | train tokens/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ffn']} | {r['ffn_kwargs']} | {r['ffn_flops_per_token']:,} | "
              f"{r['params']:,} | {r['tokens_per_second']:.0f} | {r['peak_rss_mb']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

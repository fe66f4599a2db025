"""One expanded linear at prefill: 16 experts x 512 tokens through `kernels.expert_linear`, against
dense F.linear of one expert-sized weight in the same process (1 thread, CPU time, median of 7).

Tokens are spread over experts unevenly (Dirichlet(0.5) shares, seed 0), as a real router does;
weights are random, 70% unstructured or 2:4, values and inputs in fp32 or bf16. One linear timed
over and over sits in cache: the whole-model figure is benchmarks/decode/decode_speed.py's prefill.

    python benchmarks/decode/expert_prefill_speed.py [--out 1536 --in 576]
"""

from __future__ import annotations

import argparse

import torch

from sparse_expansion.resources import cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=int, default=1536)
    parser.add_argument("--in", dest="cols", type=int, default=576)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sparse_expansion.kernels import formats, ops

    g = torch.Generator().manual_seed(0)
    k, rows, cols = args.experts, args.out, args.cols
    dense = torch.randn(k, rows, cols, generator=g)
    shares = torch.distributions.Dirichlet(torch.full((k,), 0.5)).sample()
    labels = torch.multinomial(shares, args.tokens, replacement=True, generator=g)
    x = torch.randn(args.tokens, cols, generator=g)
    print(f"# {k} experts x {args.tokens} tokens, {rows}x{cols}, tokens per expert "
          f"{sorted(torch.bincount(labels, minlength=k).tolist())}; backend {ops.backend()}")
    print("| weights | ms | vs dense fp32 | vs dense bf16 |\n|---|---|---|---|")
    d32 = cpu_ms(lambda: torch.nn.functional.linear(x, dense[0]))
    d16 = cpu_ms(lambda: torch.nn.functional.linear(x.bfloat16(), dense[0].bfloat16()))
    rows_out = [("dense fp32 (one expert's shape)", d32), ("dense bf16", d16)]
    for fmt in ("bitmask", "2:4"):
        w = dense * (torch.rand(dense.shape, generator=g) >= 0.7) if fmt == "bitmask" else \
            dense * (torch.arange(cols) % 4 < 2)
        for dtype in (torch.float32, torch.bfloat16):
            cw = formats.compress(w, fmt, dtype)
            xi = x.to(dtype)
            name = f"{'70% bitmask' if fmt == 'bitmask' else '2:4'} {formats.dtype_name(dtype)}, {k} experts"
            rows_out.append((name, cpu_ms(lambda xi=xi, cw=cw: ops.expert_linear(xi, labels, cw))))
    for name, ms in rows_out:
        print(f"| {name} | {ms:.2f} | {ms / d32:.2f}x | {ms / d16:.2f}x |")


if __name__ == "__main__":
    main()

"""sgatlin: sparsely gated tiny linear experts, their baselines, and an isoflop training study.

Modules: `router` (product routers, pure top-k maths), `layers` (FFN blocks with one interface
`ffn(x: [B, T, d]) -> [B, T, d]`), `flops` (forward matmul FLOPs per token by formula),
`transformer` (small decoder with a pluggable FFN), `data` (split + BPE tokenizer),
`training`, `isoflop`, `gating` (a look inside the router).
"""

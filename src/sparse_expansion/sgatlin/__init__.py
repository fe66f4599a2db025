"""sgatlin: sparsely gated tiny linear experts, their baselines, and an isoflop training study.

Modules: `router` (product routers, pure top-k maths), `layers` (FFN blocks with one interface
`ffn(x: [B, T, d]) -> [B, T, d]`), `ffn_types` (the registry of FFN types the CLI and the
transformer read), `flops` (forward matmul FLOPs per token by formula), `transformer` (small
decoder with a pluggable FFN; saved as artifact kind "sgatlin_lm"), `data` (split + BPE
tokenizer), `training`, `checkpoint` (atomic, checked training checkpoints), `isoflop`, and
`gating/` (a look inside the router).
"""

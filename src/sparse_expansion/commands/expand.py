"""`sparse-expansion expand`: every MLP linear becomes k routed SparseGPT experts; saved as a folder."""

from __future__ import annotations

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("expand", help="Sparse Expansion: k sparse experts per MLP linear + a router",
                              description="Expand each MLP linear into k experts, each pruned with SparseGPT "
                                          "on one k-means cluster of its inputs, and save the model.")
    common.add_model_arg(p)
    p.add_argument("--experts", type=int, required=True, help="experts per linear (k)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--sparsity", help="each expert's fraction of zeros in [0, 1), or N:M like 2:4")
    size.add_argument("--memory-budget", type=float, metavar="M",
                      help="all experts together store M x the non-zeros of one dense linear "
                           "(sets each expert's sparsity to 1 - M/k)")
    p.add_argument("--pca-dim", type=int, default=None, help="router PCA dimensions (default in_features//32, >= 8)")
    p.add_argument("--n-init", type=int, default=10, help="k-means restarts (default 10)")
    p.add_argument("--blend-below", type=float, default=1.0, metavar="R",
                   help="a cluster with fewer than R x in_features tokens has the layer's full Hessian mixed in, "
                        "in proportion to what it lacks (default 1; 0 turns blending off)")
    p.add_argument("--bits", type=int, default=None, help="fused per-channel quantization of the experts")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    common.add_calibration_args(p)
    common.add_device_arg(p)
    p.set_defaults(func=run)


def budget_sparsity(budget: float, experts: int) -> float:
    """Per-expert sparsity so k experts store `budget` x one dense layer's weights."""
    from ..errors import UsageError

    sparsity = 1.0 - budget / experts
    if not budget > 0 or not 0.0 <= sparsity < 1.0:
        raise UsageError(f"--memory-budget {budget:g} with {experts} experts gives sparsity {sparsity:g}; "
                         f"choose a budget in (0, {experts}]")
    return sparsity


def run(args) -> int:
    from ..errors import UsageError
    from ..expand import ExpandCompressor, ExpandSettings
    from ..prune import parse_sparsity

    common.require_positive(args.experts, "--experts")
    common.require_positive(args.n_init, "--n-init")
    if args.pca_dim is not None and args.pca_dim < 1:
        raise UsageError("--pca-dim must be at least 1")
    if args.blend_below < 0:
        raise UsageError("--blend-below must be 0 or more")
    if args.bits is not None and not 2 <= args.bits <= 8:
        raise UsageError("--bits must be from 2 to 8")
    if args.memory_budget is not None:
        sparsity = parse_sparsity(budget_sparsity(args.memory_budget, args.experts))
    else:
        sparsity = parse_sparsity(args.sparsity)
    settings = ExpandSettings(experts=args.experts, sparsity=sparsity, pca_dim=args.pca_dim, bits=args.bits,
                              seed=args.seed, n_init=args.n_init, blend_below=args.blend_below)
    fields = {"kind": "expanded", "method": "sparse_expansion", "experts": args.experts,
              "sparsity": sparsity.to_json(), "memory_budget": args.memory_budget, "bits": args.bits,
              "pca_dim": args.pca_dim, "n_init": args.n_init, "blend_below": args.blend_below}
    return common.run_compression(args, lambda model: ExpandCompressor(settings), fields,
                                  f"expanded ({args.experts} experts, {sparsity})")

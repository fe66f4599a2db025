"""`sparse-expansion expand`: every MLP linear becomes k routed SparseGPT experts; saved as a folder."""

from __future__ import annotations

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    from ..expand.compressor import ExpandConfig
    from ..expand.hessians import SHRINK_RULES

    p = subparsers.add_parser("expand", help="Sparse Expansion: k sparse experts per MLP linear + a router",
                              description="Expand each MLP linear into k experts, each pruned with SparseGPT "
                                          "on one k-means cluster of its inputs, and save the model.",
                              epilog="example: sparse-expansion expand smollm2-135m --experts 16 "
                                     "--sparsity 0.7 --out runs/se16")
    common.add_model_arg(p)
    p.add_argument("--experts", type=int, required=True, help="experts per linear (k)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--sparsity", help="each expert's fraction of zeros in [0, 1), or N:M like 2:4")
    size.add_argument("--memory-budget", type=float, metavar="M",
                      help="all experts together store M x the non-zeros of one dense linear "
                           "(sets each expert's sparsity to 1 - M/k)")
    default = common.config_defaults(ExpandConfig)  # the flags below: None = the config's default
    p.add_argument("--pca-dim", type=int, help="router PCA dimensions (default in_features//32, >= 8)")
    p.add_argument("--n-init", type=int, help=f"k-means restarts (default {default['n_init']})")
    p.add_argument("--blend-below", type=float, metavar="R",
                   help="strength of the pull of every cluster Hessian toward the layer's, in multiples of "
                        "in_features tokens: with --shrink prior the layer's Hessian counts as R x in_features "
                        "extra tokens, with blend clusters under R x in_features get it mixed in (default "
                        f"{default['blend_below']:g}; 0 = no pull)")
    p.add_argument("--shrink", choices=SHRINK_RULES,
                   help="how each cluster Hessian is pulled toward the layer's: prior (the layer's Hessian counts "
                        "as R x in_features extra tokens, R from --blend-below), blend (only clusters under R x "
                        "in_features tokens, in proportion to what they lack; the rule before issue 13), lw "
                        f"(Ledoit-Wolf: from each cluster's own spread), none (default {default['shrink']})")
    p.add_argument("--router-tokens", type=int, metavar="N",
                   help="the router of each layer is fit on N tokens drawn (seeded) from its first calibration "
                        "batches; every token still goes into its cluster's Hessian (default "
                        f"{default['router_tokens']})")
    p.add_argument("--balance", type=float, metavar="B",
                   help="size-constrained clusters: every expert gets between 1/B and B times its equal share of "
                        f"the router's tokens, through one routing offset per expert (B >= 1; default "
                        f"{default['balance']:g} = off)")
    p.add_argument("--bits", type=int, default=None,
                   help="fused GPTQ-style quantization of the experts (2-8); 4 and 8 are stored as int4 / int8 codes")
    common.add_group_size_arg(p)
    common.add_grid_arg(p, None)
    common.add_dense_quant_args(p)
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    common.add_allocation_args(p)
    common.add_calibration_args(p)
    runtime.add_runtime_args(p, dtype_help="storage precision of the weights and experts (statistics, router "
                                           "and solves stay float32)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..expand import budget_sparsity
    from ..methods import compress_and_save, make_config
    from ..prune import parse_sparsity

    common.require_positive(args.experts, "--experts")
    if args.n_init is not None:
        common.require_positive(args.n_init, "--n-init")
    if args.pca_dim is not None and args.pca_dim < 1:
        raise UsageError("--pca-dim must be at least 1")
    if args.blend_below is not None and args.blend_below < 0:
        raise UsageError("--blend-below must be 0 or more")
    if args.router_tokens is not None:
        common.require_positive(args.router_tokens, "--router-tokens")
    if args.bits is not None and not 2 <= args.bits <= 8:
        raise UsageError("--bits must be from 2 to 8")
    group_size = common.check_group_size(args)
    dense = common.dense_quant_config(args, group_size, common.check_grid(args))
    if args.memory_budget is not None:
        sparsity = parse_sparsity(budget_sparsity(args.memory_budget, args.experts))
    else:
        sparsity = parse_sparsity(args.sparsity)
    rt = runtime.setup(args.device, args.dtype)
    config = make_config("sparse_expansion", sparsity, experts=args.experts, pca_dim=args.pca_dim, bits=args.bits,
                         group_size=group_size, grid=common.check_grid(args), seed=args.seed, n_init=args.n_init,
                         blend_below=args.blend_below, shrink=args.shrink, router_tokens=args.router_tokens,
                         balance=args.balance,
                         **common.allocation_options(args))
    record = compress_and_save(args.model, config, args.out, common.calibration_spec(args), targets=args.targets,
                               batch_size=args.batch_size, device=rt.device, dtype=rt.dtype,
                               notes={"memory_budget": args.memory_budget},
                               dense=dense, true_sequential=args.true_sequential,
                               asymmetric=args.asymmetric)
    if args.memory_budget is not None:
        print(f"memory budget {args.memory_budget:g} -> each expert at sparsity {sparsity}")
    print(f"expanded ({args.experts} experts, {sparsity}) {len(record['linears'])} linears in "
          f"{record['seconds']['total']:.1f} s -> {args.out}")
    return 0

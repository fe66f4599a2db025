"""`sparse-expansion prune`: one-shot magnitude / Wanda / SparseGPT, saved as a loadable folder."""

from __future__ import annotations

from .. import runtime
from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    from ..methods import METHODS, PRUNING_METHODS

    methods = "; ".join(f"{name}: {METHODS[name].summary}" for name in PRUNING_METHODS)
    p = subparsers.add_parser("prune", help="prune a model one-shot (magnitude, wanda, sparsegpt)",
                              description="Prune the MLP linears (or all linears) of a model, "
                                          "layer by layer, and save it as a Hugging Face folder.",
                              epilog="example: sparse-expansion prune smollm2-135m --method sparsegpt "
                                     "--sparsity 2:4 --out runs/sg24")
    common.add_model_arg(p)
    p.add_argument("--method", choices=PRUNING_METHODS, required=True, help=methods)
    p.add_argument("--sparsity", required=True, help="fraction of zeros in [0, 1), or N:M like 2:4")
    p.add_argument("--bits", type=int, default=None,
                   help="fused GPTQ-style quantization, 2-8 bits (sparsegpt); 4 and 8 are stored as int4 / int8 codes "
                        "on exactly the grid SparseGPT chose")
    add_group_size_arg(p)
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_allocation_args(p)
    common.add_calibration_args(p)
    runtime.add_runtime_args(p, dtype_help="storage precision of the weights (statistics and solves stay float32)")
    p.set_defaults(func=run)


def add_group_size_arg(p) -> None:
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="with --bits: one grid per row and G input columns (G must divide 128, SparseGPT's block); "
                        "default one grid per row (GPTQ's per-channel)")


def check_group_size(args) -> int | None:
    """--group-size as a config field, refused in one line unless --bits is given and G divides 128."""
    if args.group_size is None:
        return None
    if args.bits is None:
        raise UsageError("--group-size needs --bits")
    if args.group_size < 1 or 128 % args.group_size:
        raise UsageError(f"--group-size must divide 128 (SparseGPT's block of columns), got {args.group_size}; "
                         "use 32, 64 or 128")
    return args.group_size


def add_allocation_args(p) -> None:
    """Non-uniform sparsity at the same total (wanda, sparsegpt, expand); see prune/allocation.py.
    Choices and defaults are the config's (AllocationFields)."""
    from ..prune.allocation import LAYER_RULES, ROW_RULES, AllocationFields

    default = common.config_defaults(AllocationFields)
    group = p.add_argument_group("non-uniform sparsity (same total number of zeros)")
    group.add_argument("--layer-alloc", choices=LAYER_RULES, default=None,
                       help="owl: layers with more outlier Wanda scores are pruned less (Yin et al. 2024); "
                            f"default {default['layer_alloc']}")
    group.add_argument("--owl-m", type=float, default=None, metavar="M",
                       help=f"OWL outlier threshold: M x the layer's mean score (default {default['owl_m']:g})")
    group.add_argument("--owl-lambda", type=float, default=None, metavar="L",
                       help=f"OWL layer sparsities span target +- L (default {default['owl_lmbda']:g})")
    group.add_argument("--row-alloc", choices=ROW_RULES, default=None,
                       help="rows (output neurons) with a higher score keep more weights: wd (Wasserstein distance "
                            "of the row's outputs to a Gaussian), variance (of its outputs), norm (of its weights); "
                            f"equal: the same count for every row; default {default['row_alloc']} (the method's "
                            "own choice)")
    group.add_argument("--row-lambda", type=float, default=None, metavar="L",
                       help=f"row sparsities span target +- L, linear in the score's rank (default "
                            f"{default['row_lmbda']:g})")
    group.add_argument("--row-tokens", type=int, default=None, metavar="N",
                       help=f"tokens per layer on which wd / variance are measured (default {default['row_tokens']})")


def allocation_options(args) -> dict:
    """The allocation flags as config fields (None = the config's default)."""
    if args.row_tokens is not None:
        common.require_positive(args.row_tokens, "--row-tokens")
    return {"layer_alloc": args.layer_alloc, "owl_m": args.owl_m, "owl_lmbda": args.owl_lambda,
            "row_alloc": args.row_alloc, "row_lmbda": args.row_lambda, "row_tokens": args.row_tokens}


def run(args) -> int:
    from ..methods import compress_and_save, make_config
    from ..prune import parse_sparsity

    sparsity = parse_sparsity(args.sparsity)
    if args.bits is not None and (args.method != "sparsegpt" or not 2 <= args.bits <= 8):
        raise UsageError("--bits needs --method sparsegpt and a value from 2 to 8")
    group_size = check_group_size(args)
    extra = {} if group_size is None else {"group_size": group_size}
    config = make_config(args.method, sparsity, bits=args.bits, **extra, **allocation_options(args))
    rt = runtime.setup(args.device, args.dtype)
    record = compress_and_save(args.model, config, args.out, common.calibration_spec(args), targets=args.targets,
                               batch_size=args.batch_size, device=rt.device, dtype=rt.dtype)
    print(f"pruned ({args.method}, {sparsity}) {len(record['linears'])} linears in "
          f"{record['seconds']['total']:.1f} s -> {args.out}")
    return 0

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
    common.add_group_size_arg(p)
    common.add_grid_arg(p, None)
    common.add_dense_quant_args(p)
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    common.add_allocation_args(p)
    common.add_calibration_args(p)
    runtime.add_runtime_args(p, dtype_help="storage precision of the weights (statistics and solves stay float32)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..methods import compress_and_save, make_config
    from ..prune import parse_sparsity

    sparsity = parse_sparsity(args.sparsity)
    if args.bits is not None and (args.method != "sparsegpt" or not 2 <= args.bits <= 8):
        raise UsageError("--bits needs --method sparsegpt and a value from 2 to 8")
    group_size = common.check_group_size(args)
    extra = {} if group_size is None else {"group_size": group_size}
    if common.check_grid(args) is not None:
        extra["grid"] = args.grid
    config = make_config(args.method, sparsity, bits=args.bits, **extra, **common.allocation_options(args))
    dense = common.dense_quant_config(args, group_size, args.grid)
    rt = runtime.setup(args.device, args.dtype)
    record = compress_and_save(args.model, config, args.out, common.calibration_spec(args), targets=args.targets,
                               batch_size=args.batch_size, device=rt.device, dtype=rt.dtype, dense=dense,
                               true_sequential=args.true_sequential,
                               asymmetric=args.asymmetric)
    print(f"pruned ({args.method}, {sparsity}) {len(record['linears'])} linears in "
          f"{record['seconds']['total']:.1f} s -> {args.out}")
    return 0

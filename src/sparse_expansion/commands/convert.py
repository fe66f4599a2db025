"""`sparse-expansion convert`: any saved causal LM with int8 / int4 weights, by round-to-nearest."""

from __future__ import annotations

from ..errors import UsageError
from . import common


def register(subparsers) -> None:
    from ..storage import DEFAULT_GRID

    p = subparsers.add_parser(
        "convert", help="quantize a model folder's weights to int8 or int4 (round-to-nearest)",
        description="Store every linear of a causal LM (a dense Hugging Face folder, a pruned or an expanded "
                    "folder) as int8 or int4 codes on an asymmetric grid per row, or per row and --group-size "
                    "input columns (its range clipped where rounding loses least, or min/max: --grid), by "
                    "round-to-nearest: pruned linears keep their zeros (bitmask "
                    "or N:M), expanded experts stay routed, attention projections and the LM head become dense "
                    "quantized linears; the token embedding and norms stay float32. Weights a --bits 4 / 8 run "
                    "already stored as codes keep SparseGPT's grid.",
        epilog="example: sparse-expansion convert runs/sg70 --bits 4 --out runs/sg70-int4")
    common.add_model_arg(p, "DIR")
    p.add_argument("--bits", type=int, choices=(8, 4), required=True, help="8 (int8) or 4 (int4)")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="one grid per row and G input columns; 0 = one per row (default: per row for int8, "
                        "128 for int4)")
    p.add_argument("--head-bits", type=int, choices=(8, 4), default=None,
                   help="the LM head's width (default --bits; 8 = per row)")
    common.add_grid_arg(p, DEFAULT_GRID)
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..artifact import is_artifact, read_record, save_artifact
    from ..io import atomic_output_dir, check_output_dir
    from ..models import load_causal_lm, resolve_model_path
    from ..storage import default_group_size, quantize_weights

    if args.group_size is not None and args.group_size < 0:
        raise UsageError(f"--group-size must be 0 (per row) or a positive number of columns, got {args.group_size}")
    group = default_group_size(args.bits) if args.group_size is None else (args.group_size or None)
    check_output_dir(args.out)
    path = resolve_model_path(args.model)
    record = dict(read_record(path)) if is_artifact(path) else {"source_model": args.model}
    model, tokenizer = load_causal_lm(args.model)
    counts = quantize_weights(model, args.bits, group, args.head_bits, args.grid)
    record["converted"] = {"source": args.model, "bits": args.bits, "group_size": group, "rounding": "nearest",
                           "grid": args.grid, "head_bits": args.head_bits or args.bits, "modules": counts}
    with atomic_output_dir(args.out) as tmp:
        save_artifact(tmp, model, tokenizer=tokenizer, record=record)
    grid = "per row" if group is None else f"groups of {group} columns"
    print(f"converted {args.model} -> {args.out}: int{args.bits}, {grid}, {args.grid} grid; quantized "
          f"{counts['dense']} dense linears, {counts['compressed']} sparse linears, {counts['experts']} expert sets; "
          f"kept {counts['kept']} already quantized")
    return 0

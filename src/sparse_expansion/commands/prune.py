"""`sparse-expansion prune`: one-shot magnitude / Wanda / SparseGPT, saved as a loadable folder."""

from __future__ import annotations

import time

from . import common


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a model one-shot (magnitude, wanda, sparsegpt)",
                              description="Prune the MLP linears (or all linears) of a model, "
                                          "layer by layer, and save it.")
    common.add_model_arg(p)
    p.add_argument("--method", choices=("magnitude", "wanda", "sparsegpt"), required=True)
    p.add_argument("--sparsity", required=True, help="fraction of zeros in [0, 1), or N:M like 2:4")
    p.add_argument("--bits", type=int, default=None, help="fused per-channel quantization (sparsegpt)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    common.add_calibration_args(p)
    common.add_device_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine import calibrate
    from ..errors import UsageError
    from ..evaluate import model_costs
    from ..io import atomic_output_dir, check_output_dir
    from ..models import load_model
    from ..prune import PruneCompressor, parse_sparsity
    from ..saving import save_model

    sparsity = parse_sparsity(args.sparsity)
    if args.bits is not None and (args.method != "sparsegpt" or not 2 <= args.bits <= 8):
        raise UsageError("--bits needs --method sparsegpt and a value from 2 to 8")
    common.require_positive(args.calib_windows, "--calib-windows")
    common.require_positive(args.batch_size, "--batch-size")
    device = common.check_device(args.device)
    check_output_dir(args.out)

    model, tokenizer = load_model(args.model)
    compressor = PruneCompressor(args.method, sparsity, bits=args.bits)
    # Magnitude needs no data: don't make it read (or validate) a calibration corpus.
    windows = common.load_calibration(args, model, tokenizer) if compressor.needs_calibration else None
    start = time.perf_counter()
    times = calibrate(model, windows, compressor, targets=args.targets, batch_size=args.batch_size,
                      device=device)
    elapsed = time.perf_counter() - start
    per_linear = compressor.record()
    record = {
        "kind": "pruned",
        "method": args.method,
        "sparsity": sparsity.to_json(),
        "bits": args.bits,
        "source_model": args.model,
        "calibration": common.calibration_record(args) if compressor.needs_calibration else None,
        "linears": per_linear,
        "mean_sparsity": sum(r["sparsity"] for r in per_linear.values()) / max(len(per_linear), 1),
        "costs": model_costs(model),
        "seconds": {"total": elapsed, "capture": times.capture, "forward": times.forward,
                    "compress": times.compress},
        "machine": common.machine_record(),
    }
    with atomic_output_dir(args.out) as tmp:
        save_model(model, tokenizer, tmp, record)
    print(f"pruned {len(per_linear)} linears with {args.method} to {sparsity} "
          f"(mean achieved {record['mean_sparsity']:.4f}) in {elapsed:.1f} s -> {args.out}")
    return 0

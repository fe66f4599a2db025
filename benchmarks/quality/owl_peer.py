"""OWL parity with llm-compressor: the same model, calibration windows and evaluation for ours
and theirs (uniform and OWL), each run as its own process.

    python benchmarks/quality/owl_peer.py --out runs/owl_peer --method sparsegpt --sparsity 0.7 \
        [--llmc-python $LLMC_PYTHON] [--targets all|mlp]

llm-compressor lives in its own virtual environment (see benchmarks/quality/llmc_oneshot.py);
this script writes the windows our CLI would sample, runs their oneshot on them, evaluates both
with `sparse-expansion eval`, and appends rows to OUT/results.jsonl (the grid driver's format).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from sparse_expansion.benchmarking import evaluate, run_config
from sparse_expansion.resources import run_measured

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", choices=("sparsegpt", "wanda"), default="sparsegpt")
    parser.add_argument("--sparsity", default="0.7")
    parser.add_argument("--owl-m", default="5")
    parser.add_argument("--owl-lambda", default="0.08")
    parser.add_argument("--targets", choices=("all", "mlp"), default="all")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-data", nargs="+", default=["shakespeare:test", "pydoc"])
    parser.add_argument("--llmc-python", default=os.environ.get("LLMC_PYTHON"),
                        help="python of llm-compressor's own venv (default $LLMC_PYTHON)")
    parser.add_argument("--only", nargs="*", help="ours-uniform ours-owl llmc-uniform llmc-owl")
    args = parser.parse_args()
    if not args.llmc_python and (not args.only or any(o.startswith("llmc") for o in args.only)):
        parser.error("the llm-compressor side needs --llmc-python or $LLMC_PYTHON (its own venv's python)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from sparse_expansion.data import CalibrationSpec
    from sparse_expansion.models import load_model, shipped_model_dir

    tag = f"{args.method}-{args.sparsity}-{args.targets}"
    calib = ["--calib-windows", str(args.calib_windows), "--seqlen", str(args.seqlen), "--targets", args.targets]
    owl = ["--layer-alloc", "owl", "--owl-m", args.owl_m, "--owl-lambda", args.owl_lambda]
    done = set()
    if (args.out / "results.jsonl").exists():
        done = {json.loads(line)["name"] for line in (args.out / "results.jsonl").read_text().splitlines()}
    for variant, extra in (("uniform", []), ("owl", owl)):
        name = f"ours-{variant}-{tag}"
        if name in done or (args.only and f"ours-{variant}" not in args.only):
            continue
        run_config(args.out, {"name": name, "method": args.method, "sparsity": args.sparsity, "peer": "ours",
                              "cmd": ["prune", "--method", args.method, "--sparsity", args.sparsity, *calib, *extra]},
                   args.eval_windows, args.eval_data)

    model_dir = shipped_model_dir()
    _, tokenizer = load_model(str(model_dir))
    windows = CalibrationSpec(windows=args.calib_windows, seqlen=args.seqlen).sample(tokenizer)
    torch.save(windows, args.out / "windows.pt")
    for variant in ("uniform", "owl"):
        name = f"llmc-{variant}-{tag}"
        if name in done or (args.only and f"llmc-{variant}" not in args.only):
            continue
        folder = args.out / f"model-{name}"
        cmd = [args.llmc_python, str(HERE / "llmc_oneshot.py"), str(model_dir), str(args.out / "windows.pt"),
               str(folder), "--method", args.method, "--sparsity", args.sparsity]
        if variant == "owl":
            cmd += ["--owl-m", args.owl_m, "--owl-lambda", args.owl_lambda]
        if args.targets == "mlp":
            cmd.append("--mlp-only")
        log = args.out / f"{name}.log"
        code, wall, peak_mb = run_measured(cmd, log)
        if code != 0:
            print(f"{name}: failed (exit {code}), see {log}")
            continue
        row = {"name": name, "method": args.method, "sparsity": args.sparsity, "peer": "llm-compressor",
               "compress_seconds": wall, "peak_gib": peak_mb / 1024, "load": os.getloadavg(),
               "llmc_sparsities": json.loads((folder / "llmc_sparsities.json").read_text())["sparsities"],
               "perplexity_by_data": {}}
        for i, data in enumerate(args.eval_data):
            result = evaluate(str(folder), args.eval_windows, log, data)
            row["perplexity_by_data"][data] = result["perplexity"]
            if i == 0:
                row.update(perplexity=result["perplexity"], mlp_nonzeros=result["mlp_nonzeros"],
                           nonzeros=result["nonzeros"], flops_per_token=result["flops_per_token"])
        row["date"] = time.strftime("%Y-%m-%d %H:%M")
        with (args.out / "results.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{name}: {row['perplexity_by_data']}", flush=True)


if __name__ == "__main__":
    main()

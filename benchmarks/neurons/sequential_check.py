"""Check the ablation's `--hessians dense` shortcut: rerun chosen (rule, fraction) pairs with the
layer-sequential engine (SparseGPT proper) on the rows the measured run chose.

Usage: python benchmarks/neurons/sequential_check.py RUN_DIR --rules wd,variance,random --fraction 0.03
Prints one JSON line per rule (RUN_DIR is a `sparse-expansion neurons --ablate` folder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparse_expansion.data import calibration_windows, corpus_tokens, evaluation_windows
from sparse_expansion.engine import calibrate
from sparse_expansion.evaluate import perplexity
from sparse_expansion.models import load_model
from sparse_expansion.neurons.ablation import RowPruneCompressor, choose
from sparse_expansion.neurons.measure import ProjectionStats
from sparse_expansion.prune import parse_sparsity


def stats_from_json(result: dict) -> dict[int, dict[str, ProjectionStats]]:
    def t(values):
        return torch.tensor([float("nan") if v is None else v for v in values], dtype=torch.float64)

    return {int(i): {name: ProjectionStats(name, t(p["wd"]), t(p["md"]), t(p["mean"]), t(p["variance"]),
                                           t(p["norm"]), t(p["capacity"]), 0.0)
                     for name, p in layer["projections"].items()}
            for i, layer in result["layers"].items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--rules", default="wd,variance,random")
    p.add_argument("--fraction", type=float, default=0.03)
    args = p.parse_args()
    result = json.loads((Path(args.run) / "neurons.json").read_text())
    a = result["ablation_settings"]
    stats = stats_from_json(result)
    model, tok = load_model(result["model"])
    calib = calibration_windows(corpus_tokens(a["calib"], tok), a["calib_windows"], a["seqlen"], result["seed"])
    evaluation = evaluation_windows(corpus_tokens(a["eval_data"], tok), a["seqlen"], a["eval_windows"])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for rule in args.rules.split(","):
        start = time.perf_counter()
        calibrate(model, calib, RowPruneCompressor(choose(stats, rule, args.fraction, 0),
                                                   parse_sparsity(a["sparsity"])), batch_size=4)
        ppl = perplexity(model, evaluation, batch_size=4)["perplexity"]
        model.load_state_dict(saved)
        dense_hessian = [r["perplexity"] for r in result["ablation"]
                         if r["rule"] == rule and r["fraction"] == args.fraction and r["seed"] in (None, 0)]
        print(json.dumps({"rule": rule, "fraction": args.fraction, "sequential": ppl,
                          "dense_hessians": dense_hessian[0] if dense_hessian else None,
                          "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()

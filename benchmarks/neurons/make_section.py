"""Print the BENCHMARKS.md neurons section from the two runs' neurons.json files.

Usage: python benchmarks/neurons/make_section.py ABLATION_RUN_DIR [EXPANDED_RUN_DIR]
(the folders written by smollm2.sh and expanded.sh/neurons_se16). Every number is read from them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from sparse_expansion.artifact import read_manifest


def wd_table(result: dict) -> list[str]:
    lines = ["| layer | WD median | WD top-3% mean | WD max | share > 3x floor | MD median | MD top-3% median "
             "| Spearman WD~MD |", "|---|---|---|---|---|---|---|---|"]
    for i, layer in result["layers"].items():
        s = layer["summary"]
        lines.append(f"| {i} | {s['wd_median']:.4f} | {s['wd_top_mean']:.4f} | {s['wd_max']:.3f} | "
                     f"{s['above_3x_noise']:.0%} | {s['md_median']:.3f} | {s['md_top_median']:.3f} | "
                     f"{s['spearman_wd_md']:+.2f} |")
    return lines


def ablation_table(rows: list[dict]) -> list[str]:
    dense = next(r["perplexity"] for r in rows if r["rule"] == "dense")
    fractions = sorted({r["fraction"] for r in rows if r["rule"] != "dense"})
    rules = ["wd", "random", "mean", "variance", "norm"]
    lines = [f"Dense: **{dense:.3f}**.", "", "| x | top WD | random (mean ± sd, 3 seeds) | top abs mean | top variance "
             "| top norm |", "|---|---|---|---|---|---|"]
    for f in fractions:
        cells = []
        for rule in rules:
            vals = [r["perplexity"] for r in rows if r["rule"] == rule and r["fraction"] == f]
            cell = f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")
            cells.append(f"**{cell}**" if rule == "wd" else cell)
        lines.append(f"| {f:.0%} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ab = json.loads((Path(sys.argv[1]) / "neurons.json").read_text())
    s = ab["summary"]
    out = [f"Model `{ab['model']}` (de-quantized Q4_1), measured on `{ab['data']}`: {ab['windows']} windows x "
           f"{ab['seqlen']} tokens, {ab['tokens']} token positions kept per neuron, {ab['pairs']} MD pairs, seed "
           f"{ab['seed']}. Neuron = a row of `{next(iter(ab['layers'].values()))['module']}` (table) - `mlp.up_proj` "
           f"is in neurons.json too. Normal-sample noise floor for {ab['tokens']} tokens: {ab['noise_floor']:.4f}.", "",
           f"Across the {s['layers']} layers the top 3% of neurons have {s['top_to_median_ratio_median']:.1f}x the "
           f"median WD (median over layers; at least {s['top_to_median_ratio_min']:.1f}x in every layer); "
           f"largest WD {s['wd_max']:.3f}.", ""]
    out += wd_table(ab) + [""]
    if "ablation" in ab:
        a = ab["ablation_settings"]
        out += [f"**Ablation**: SparseGPT at sparsity {a['sparsity']} on only the chosen rows of "
                f"{' and '.join(a['modules'])} in all layers (rows chosen per projection); Hessians `{a['hessians']}` "
                f"from {a['calib']} ({a['calib_windows']} x {a['seqlen']}); perplexity on {a['eval_data']} "
                f"({a['eval_windows']} x {a['seqlen']}, the same windows for every row).", ""]
        out += ablation_table(ab["ablation"]) + [""]
    secs = ab["seconds"]
    out += ["Time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items()) + ".", ""]
    if len(sys.argv) > 2:
        ex = json.loads((Path(sys.argv[2]) / "neurons.json").read_text())
        u = ex["untangling"]
        o = u["overall"]
        h, c = o["high_wd"], o["high_wd_control"]
        made = read_manifest(ex["model"])
        expanded = sorted({name.split(".")[-1] for name in made["modules"]})
        cal = made["calibration"]
        out += [f"**Part 4** (`{ex['model']}`: {made['experts']} experts at sparsity {made['sparsity']}, "
                f"{', '.join(expanded)} of all {len(made['modules']) // len(expanded)} layers expanded "
                f"by `sparse-expansion expand` on {cal['windows']} x {cal['seqlen']} tokens of `{cal['data']}`; "
                f"measured layers {', '.join(u['layers'])}): over "
                f"{h['neurons']} high-WD neurons (top 3% per layer and projection), **{h['fraction_lower']:.1%}** "
                f"lower their WD, median relative drop **{h['median_relative_drop']:.1%}** (paper: ~98%, ~42%). "
                f"Control, dense weights z-scored in the same clusters: {c['fraction_lower']:.1%}, "
                f"{c['median_relative_drop']:.1%}. All neurons: {o['all']['fraction_lower']:.1%}, "
                f"{o['all']['median_relative_drop']:.1%}. MD median, all neurons: {o['md_dense_median']:.3f} -> "
                f"{o['md_expert_median']:.3f}; high-WD neurons: {o['md_high_dense_median']:.3f} -> "
                f"{o['md_high_expert_median']:.3f}.", "",
                "| layer | projection | high-WD lower | median drop | control lower | control drop "
                "| MD dense -> expert |",
                "|---|---|---|---|---|---|---|"]
        for i, entry in u["layers"].items():
            for name, e in entry.items():
                sm = e["summary"]
                out.append(f"| {i} | {name} | {sm['high_wd']['fraction_lower']:.0%} | "
                           f"{sm['high_wd']['median_relative_drop']:.1%} | "
                           f"{sm['high_wd_control']['fraction_lower']:.0%} | "
                           f"{sm['high_wd_control']['median_relative_drop']:.1%} | "
                           f"{sm['md_dense_median']:.3f} -> {sm['md_expert_median']:.3f} |")
        out += ["", "Time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in ex["seconds"].items()) + ".", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()

"""Benchmark driver for one-shot pruning and Sparse Expansion on the shipped model.

Each configuration runs as its own `sparse-expansion prune|expand` process (so its wall time and
peak memory are its own, read with os.wait4), then `sparse-expansion eval --json` on the result.
Results append to RESULTS/results.jsonl; finished configurations are skipped on rerun, so an
interrupted grid resumes. The model folders are deleted after evaluation (an expanded folder
stores every expert).

    python benchmarks/pruning/compression.py pruning   --out runs/bench_pruning
    python benchmarks/pruning/compression.py expansion --out runs/bench_expansion
    python benchmarks/pruning/compression.py table     --out runs/bench_expansion
    python benchmarks/pruning/compression.py pivot     --out runs/bench_expansion   # experts x sparsity

Variants for investigations: `--extra "--blend-below 4" --tag b4` appends the flags to every
`expand` run and the tag to its name (se16-0.7+b4); `--keep NAME` keeps that model folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from sparse_expansion.benchmarking import done_names, run_config

SPARSITIES = ("0.5", "0.7", "0.9", "2:4")


def grids(name: str, calib: int, extra: list[str] | None = None, tag: str = "", seqlen: int = 512) -> list[dict]:
    base = ["--calib-windows", str(calib), "--seqlen", str(seqlen)]
    variant = [*(extra or []), *base]
    suffix = f"+{tag}" if tag else ""
    runs: list[dict] = [{"name": "dense", "method": "dense", "sparsity": "0", "experts": 0, "cmd": None}]
    sparsities = ("0.5", "0.7", "2:4") if name == "pruning" else SPARSITIES
    for s in sparsities:
        for method in ("magnitude", "wanda", "sparsegpt"):
            runs.append({"name": f"{method}-{s}", "method": method, "sparsity": s, "experts": 1,
                         "cmd": ["prune", "--method", method, "--sparsity", s, *base]})
    if name == "expansion":
        for s in SPARSITIES:
            for k in (2, 4, 8, 16):
                runs.append({"name": f"se{k}-{s}{suffix}", "method": "sparse_expansion", "sparsity": s, "experts": k,
                             "cmd": ["expand", "--experts", str(k), "--sparsity", s, *variant]})
        for budget in ("1", "2", "4"):
            runs.append({"name": f"se16-budget{budget}{suffix}", "method": "sparse_expansion", "sparsity": None,
                         "experts": 16, "memory_budget": float(budget),
                         "cmd": ["expand", "--experts", "16", "--memory-budget", budget, *variant]})
    return runs


def run_grid(name: str, out: Path, calib: int, windows: int, only: list[str] | None,
             extra: list[str] | None = None, tag: str = "", keep: list[str] | None = None,
             seqlen: int = 512, eval_data: tuple[str, ...] = ("shakespeare:test",)) -> None:
    out.mkdir(parents=True, exist_ok=True)
    done = done_names(out / "results.jsonl")
    for cfg in grids(name, calib, extra, tag, seqlen):
        if cfg["name"] in done or (only and cfg["name"] not in only):
            continue
        run_config(out, {**cfg, "calib_windows": calib}, windows, list(eval_data), keep=cfg["name"] in (keep or []))


def table(out: Path) -> str:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    lines = ["| config | sparsity | experts | perplexity | MFLOPs/token | MLP non-zeros (M) | compress s | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else "–"
        seconds = f"{r['compress_seconds']:.0f}" + ("*" if r.get("reused_from") else "")
        lines.append(f"| {r['name']} | {r['sparsity'] if r['sparsity'] is not None else r.get('sparsity_effective')} "
                     f"| {r['experts']} | {r['perplexity']:.2f} | {r['flops_per_token'] / 1e6:.1f} "
                     f"| {r['mlp_nonzeros'] / 1e6:.1f} | {seconds} | {peak} |")
    reused = {r["reused_from"] for r in rows if r.get("reused_from")}
    lines += [f"\n\\* row copied from {source}" for source in sorted(reused)]
    return "\n".join(lines)


def pivot(out: Path) -> str:
    """Perplexity by experts (columns) and sparsity (rows), with the ratio to SparseGPT (k = 1)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ks = (1, 2, 4, 8, 16)
    lines = ["| sparsity | magnitude | Wanda | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    def ppl(sparsity: str, method: str, k: int = 1) -> float | None:
        found = [r["perplexity"] for r in rows if r["method"] == method and r["sparsity"] == sparsity
                 and (method != "sparse_expansion" or r["experts"] == k) and "+" not in r["name"]]
        return found[0] if found else None

    for s in SPARSITIES:
        base = ppl(s, "sparsegpt")
        cells = []
        for k in ks:
            value = base if k == 1 else ppl(s, "sparse_expansion", k)
            if value is None:
                cells.append("–")
            elif k == 1 or base is None:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({value / base:.2f}×)")
        others = [ppl(s, m) for m in ("magnitude", "wanda")]
        lines.append(f"| {s} | " + " | ".join("–" if v is None else f"{v:.4g}" for v in others) + " | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=("pruning", "expansion", "table", "pivot", "run"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length (evaluation: 512)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-data", nargs="+", default=["shakespeare:test"],
                        help="corpora to evaluate on; the first is the row's `perplexity`")
    parser.add_argument("--only", nargs="*", help="run only these configuration names")
    parser.add_argument("--extra", default="", help="extra flags for every expand run, e.g. '--pca-dim 64'")
    parser.add_argument("--tag", default="", help="suffix for the names of expand runs made with --extra")
    parser.add_argument("--keep", nargs="*", help="keep these configurations' model folders")
    parser.add_argument("--name", help="`run`: the row's name (skipped if OUT/results.jsonl has it)")
    parser.add_argument("--model", default="smollm2-135m",
                        help="`run`: the model to compress (a shipped name or folder)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]  # `run`: the CLI command after --, e.g. -- prune --method wanda
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.grid == "table":
        print(table(args.out))
    elif args.grid == "pivot":
        print(pivot(args.out))
    elif args.grid == "run":
        command = args.command
        if not args.name or not command:
            parser.error("run needs --name and a command after --")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.name in done_names(args.out / "results.jsonl"):
            print(f"{args.name}: already in {args.out / 'results.jsonl'}")
            return
        cfg = {"name": args.name, "method": command[0] if command[0] == "expand" else
               command[command.index("--method") + 1] if "--method" in command else command[0],
               "cmd": command if command[0] != "dense" else None}
        run_config(args.out, cfg, args.eval_windows, args.eval_data, keep=bool(args.keep is not None),
                   model=args.model)
    else:
        if args.extra and not args.tag:
            parser.error("--extra needs a --tag, so variant rows do not mix with the default ones")
        run_grid(args.grid, args.out, args.calib_windows, args.eval_windows, args.only,
                 shlex.split(args.extra), args.tag, args.keep, args.seqlen, tuple(args.eval_data))
        print(table(args.out))


if __name__ == "__main__":
    main()

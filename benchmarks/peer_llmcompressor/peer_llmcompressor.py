"""Peer benchmark: llm-compressor's SparseGPT and Wanda against ours, on the same model and tokens.

Both sides prune the MLP linears (gate/up/down of every decoder layer) of the shipped SmolLM2-135M
(our converted fp32 Hugging Face folder) on the SAME 32 x 512 calibration tokens: `prepare` draws
them with our CalibrationSpec, exactly as `sparse-expansion prune` does, and saves them; theirs
receive them as a `datasets.Dataset` of input_ids. Each compression is its own process (wall time
and peak RSS read with os.wait4); both results are then scored by OUR evaluator
(`sparse-expansion eval DIR --json`: perplexity on 16 x 512 windows of shakespeare:test).

llm-compressor runs from its own virtual environment (never a dependency of this project):

    python3 -m venv ../llmc-venv      # anywhere outside this checkout
    ../llmc-venv/bin/pip install torch==2.13.0 && ../llmc-venv/bin/pip install llmcompressor==0.14.0.1
    export LLMC_PYTHON=$(realpath ../llmc-venv/bin/python)

Then, from this project's venv (configs: sparsegpt-0.5 sparsegpt-0.7 sparsegpt-2:4 wanda-0.5 ...):

    S=benchmarks/peer_llmcompressor/peer_llmcompressor.py
    python $S prepare --out runs/peer
    OMP_NUM_THREADS=1 python $S run --out runs/peer --side theirs --only sparsegpt-0.5
    OMP_NUM_THREADS=1 python $S run --out runs/peer --side ours --only sparsegpt-0.5
    python $S table --out runs/peer
    python $S compare OURS_DIR THEIRS_DIR   # per-layer mask agreement (--keep)

`run` skips configurations already in RESULTS/results.jsonl, so it resumes. The `_oneshot`
subcommand is what runs inside the llm-compressor venv: this file imports only the standard
library at the top so that venv needs nothing of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository (this study lives in benchmarks/peer_llmcompressor/)
LLMC_PYTHON = os.environ.get("LLMC_PYTHON")  # their venv's python (set-up above); needed by --side theirs
CONFIGS = tuple(f"{method}-{sparsity}" for method in ("sparsegpt", "wanda") for sparsity in ("0.5", "0.7", "2:4"))
EVAL_WINDOWS = 16
SEQLEN = 512


def split_config(name: str) -> tuple[str, str]:
    method, _, sparsity = name.partition("-")
    if method not in ("sparsegpt", "wanda") or not sparsity:
        raise SystemExit(f"unknown config {name!r}; use e.g. {', '.join(CONFIGS)}")
    return method, sparsity


# ------------------------------------------------------------------ inside the llm-compressor venv


def oneshot_main(args) -> int:
    """Run llm-compressor's oneshot on our model folder with our tokens; print one JSON line."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    method, sparsity = split_config(args.config)
    ids = load_file(str(Path(args.calib)))["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    structured = ":" in sparsity
    options = dict(sparsity=0.5 if structured else float(sparsity), mask_structure=sparsity if structured else "0:0",
                   targets=[r"re:.*mlp$"])  # the MLP blocks; their gate/up/down linears are pruned
    modifier = (SparseGPTModifier(block_size=128, dampening_frac=0.01, **options) if method == "sparsegpt"
                else WandaPruningModifier(**options))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    loaded = time.perf_counter()
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=[modifier],
            num_calibration_samples=ids.shape[0], max_seq_length=ids.shape[1], shuffle_calibration_samples=False,
            batch_size=1, output_dir=args.out)
    done = time.perf_counter()
    linears = [m for n, m in model.named_modules() if n.endswith(("gate_proj", "up_proj", "down_proj"))]
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    total = sum(m.weight.numel() for m in linears)
    print(json.dumps({"load_s": loaded - start, "oneshot_s": done - loaded, "mlp_sparsity": zeros / total,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    return 0


# --------------------------------------------------------------------------- in this project's venv


def cli() -> list[str]:
    return [sys.executable, "-m", "sparse_expansion.cli"]


def prepare(out: Path) -> None:
    """Draw the calibration windows exactly as `sparse-expansion prune` does and save them."""
    from safetensors.torch import save_file

    from sparse_expansion.data import CalibrationSpec
    from sparse_expansion.models import load_model, shipped_model_dir

    out.mkdir(parents=True, exist_ok=True)
    spec = CalibrationSpec()  # the CLI's defaults: shakespeare:train, 32 x 512, seed 0
    model, tokenizer = load_model("smollm2-135m")
    windows = spec.sample(tokenizer, model)
    save_file({"input_ids": windows.contiguous()}, str(out / "calib.safetensors"))
    meta = {"calibration": spec.to_json(), "shape": list(windows.shape), "model": str(shipped_model_dir())}
    (out / "calib.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{windows.shape[0]} x {windows.shape[1]} calibration tokens -> {out / 'calib.safetensors'}")


def last_json_line(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def evaluate(model: Path, log: Path) -> dict:
    done = subprocess.run([*cli(), "eval", str(model), "--windows", str(EVAL_WINDOWS), "--seqlen", str(SEQLEN),
                           "--json"], capture_output=True, text=True, check=True)
    with log.open("a") as handle:
        handle.write(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_one(side: str, config: str, out: Path, keep: bool) -> dict:
    from sparse_expansion.artifact import is_artifact, read_record
    from sparse_expansion.models import shipped_model_dir
    from sparse_expansion.resources import run_measured

    method, sparsity = split_config(config)
    model_dir = out / "models" / f"{side}-{config.replace(':', '_')}"
    log = out / "logs" / f"{side}-{config.replace(':', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    if side == "theirs":
        if not LLMC_PYTHON:
            raise SystemExit("set LLMC_PYTHON to the python of llm-compressor's own venv (see this script's help)")
        cmd = [LLMC_PYTHON, str(Path(__file__).resolve()), "_oneshot", "--model", str(shipped_model_dir()),
               "--calib", str(out / "calib.safetensors"), "--config", config, "--out", str(model_dir)]
    else:
        cmd = [*cli(), "prune", "smollm2-135m", "--method", method, "--sparsity", sparsity, "--out", str(model_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    if side == "theirs":
        env.pop("PYTHONPATH")  # their venv must not see our package
    code, wall, peak_mb = run_measured(cmd, log, env)
    if code != 0:
        raise SystemExit(f"{side} {config} failed with exit code {code}; see {log}")
    if side == "theirs":
        inner = last_json_line(log)
        compress_s, achieved = inner.get("oneshot_s"), inner.get("mlp_sparsity")
    else:
        record = read_record(model_dir) if is_artifact(model_dir) else {}
        compress_s, achieved = record.get("seconds", {}).get("total"), record.get("mean_sparsity")
    if side == "ours":  # keep how it was made (per-linear sparsity, damping) after the folder is deleted
        shutil.copy2(model_dir / "sparse_expansion.json", log.with_suffix(".record.json"))
    result = evaluate(model_dir, log)
    row = {"side": side, "config": config, "perplexity": result["perplexity"], "wall_s": wall,
           "peak_gib": peak_mb / 1024,
           "compress_s": compress_s, "mlp_sparsity": achieved, "nonzeros": result["nonzeros"],
           "threads": os.environ.get("OMP_NUM_THREADS"), "load": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return row


def load_results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(out: Path, sides: list[str], only: list[str] | None, keep: bool) -> None:
    if not (out / "calib.safetensors").is_file():
        raise SystemExit(f"{out / 'calib.safetensors'} is missing; run `prepare --out {out}` first")
    done = {(r["side"], r["config"]) for r in load_results(out)}
    for config in only or CONFIGS:
        for side in sides:
            if (side, config) in done:
                print(f"{side} {config}: done already")
                continue
            row = run_one(side, config, out, keep)
            with (out / "results.jsonl").open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"{side} {config}: perplexity {row['perplexity']:.2f}, {row['wall_s']:.0f} s, "
                  f"{row['peak_gib']:.2f} GiB", flush=True)


def minutes(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def table(out: Path) -> None:
    rows = {(r["side"], r["config"]): r for r in load_results(out)}
    print("| config | perplexity ours | perplexity llm-compressor | gap | MLP sparsity ours / theirs | "
          "wall ours / theirs | compression s ours / theirs | peak GiB ours / theirs | load (15 min) ours / theirs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in CONFIGS:
        ours, theirs = rows.get(("ours", config)), rows.get(("theirs", config))
        if ours is None or theirs is None:
            continue
        gap = theirs["perplexity"] / ours["perplexity"] - 1
        print(f"| {config} | {ours['perplexity']:.2f} | {theirs['perplexity']:.2f} | {gap:+.1%} | "
              f"{ours['mlp_sparsity']:.6f} / {theirs['mlp_sparsity']:.6f} | "
              f"{minutes(ours['wall_s'])} / {minutes(theirs['wall_s'])} | "
              f"{ours['compress_s']:.0f} / {theirs['compress_s']:.0f} | "
              f"{ours['peak_gib']:.2f} / {theirs['peak_gib']:.2f} | "
              f"{ours['load'][2]:.1f} / {theirs['load'][2]:.1f} |")


def compare(a: Path, b: Path) -> None:
    """Layer by layer, how far two pruned models of the same source agree: the fraction of MLP weights
    whose keep/prune decision differs, and the relative difference of the kept weights."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        handle = safe_open(str(folder / "model.safetensors"), "pt")
        return {k: handle.get_tensor(k) for k in handle.keys() if k.endswith(("gate_proj.weight", "up_proj.weight",
                                                                              "down_proj.weight"))}

    ta, tb = tensors(a), tensors(b)
    print("| layer | mask differs (gate / up / down) | relative weight difference (gate / up / down) |")
    print("|---|---|---|")
    layers = sorted({int(k.split(".")[2]) for k in ta})
    for layer in layers:
        masks, diffs = [], []
        for proj in ("gate_proj", "up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.{proj}.weight"
            wa, wb = ta[key].float(), tb[key].float()
            masks.append(f"{((wa == 0) != (wb == 0)).float().mean().item():.2%}")
            diffs.append(f"{((wa - wb).norm() / wa.norm()).item():.3f}")
        print(f"| {layer} | {' / '.join(masks)} | {' / '.join(diffs)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="draw and save the calibration tokens")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("run", help="compress with one or both sides and evaluate")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", choices=("ours", "theirs", "both"), default="both")
    p.add_argument("--only", nargs="*", help=f"configs (default all: {' '.join(CONFIGS)})")
    p.add_argument("--keep", action="store_true", help="keep the pruned model folders")
    p = sub.add_parser("table", help="print the markdown table")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("compare", help="layer-by-layer agreement of two pruned model folders (kept with --keep)")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p = sub.add_parser("_oneshot", help=argparse.SUPPRESS)
    for flag in ("--model", "--calib", "--config", "--out"):
        p.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    if args.command == "_oneshot":
        return oneshot_main(args)
    if args.command == "prepare":
        prepare(args.out)
    elif args.command == "compare":
        compare(args.a, args.b)
    elif args.command == "run":
        run(args.out, ["ours", "theirs"] if args.side == "both" else [args.side], args.only, args.keep)
    else:
        table(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

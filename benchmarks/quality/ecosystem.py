"""The ecosystem around a compressed real model, checked end to end (issue 21 part 2 on Gemma 3):

- export: a pruned folder -> `sparse-expansion export --format compressed-tensors`; plain
  transformers loads the export, its logits against our loader's on the pruned folder, and
  `sparse-expansion eval` on both (same windows: the perplexities must be equal);
- remote: an expanded folder loaded by plain transformers (trust_remote_code, our package blocked
  from import, as a user without it installed) against our loader: logits and greedy tokens;
- lmeval: `sparse-expansion lm-eval` on the built-in offline task for the dense model and both folders;
- neurons: `sparse-expansion neurons` (WD per neuron, then the ablation) on a few layers of the model.

Each step runs its commands as child processes, one at a time (one real model in memory at once),
and merges its result into OUT/ecosystem.json, so steps can be run (or rerun) one by one:

    python benchmarks/quality/ecosystem.py --model gemma3-270m --pruned runs/g/model-sparsegpt70-rerun \
        --expanded runs/g/model-se16-70-variance --out benchmarks/quality/results/FOLDER --steps export remote
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from sparse_expansion.benchmarking import CLI

PROMPT = "Now is the winter of our discontent made glorious summer by this sun of York"

# Our loader's logits and greedy continuation of PROMPT: argv folder, out.pt
OURS = textwrap.dedent("""
    import sys, torch
    from sparse_expansion.models import load_model
    folder, out = sys.argv[1:]
    model, tokenizer = load_model(folder)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    torch.save({"ids": ids, "logits": logits, "tokens": tokens}, out)
""")

# Plain transformers, our package unimportable: argv folder, ids.pt (from OURS), out.pt
PLAIN = textwrap.dedent("""
    import sys
    sys.modules["sparse_expansion"] = None
    import torch
    from transformers import AutoModelForCausalLM
    folder, ours, out = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.load(ours)["ids"]
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    torch.save({"logits": logits, "tokens": tokens}, out)
""")


def child(code: str, args: list[str], log: Path, isolated: bool = False) -> float:
    """Run a Python snippet as its own process (output to `log`); returns its wall seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if isolated:  # a user without our package: no PYTHONPATH, no user site, fresh remote-code cache
        env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
        env["HF_MODULES_CACHE"] = str(log.parent / "hf_modules")
    start = time.perf_counter()
    with log.open("a") as handle:
        subprocess.run([sys.executable, *(["-I"] if isolated else []), "-c", f"PROMPT = {PROMPT!r}\n" + code, *args],
                       env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def cli(args: list[str], log: Path) -> tuple[str, float]:
    """`sparse-expansion ARGS` as a child process: (its stdout, wall seconds); stderr to `log`."""
    start = time.perf_counter()
    with log.open("a") as handle:
        handle.write("$ " + " ".join(map(str, args)) + "\n")
        handle.flush()
        out = subprocess.run([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=handle, text=True, check=True,
                             stdin=subprocess.DEVNULL)
    return out.stdout, time.perf_counter() - start


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def compare(ours: Path, theirs: Path) -> dict:
    import torch

    a, b = torch.load(ours), torch.load(theirs)
    scale = float(a["logits"].abs().max())
    return {"tokens_in_prompt": int(a["ids"].shape[1]), "logits_identical": bool(torch.equal(a["logits"], b["logits"])),
            "max_abs_diff": float((a["logits"] - b["logits"]).abs().max()), "max_abs_logit": scale,
            "greedy_tokens_equal": bool(torch.equal(a["tokens"], b["tokens"])), "greedy_tokens": a["tokens"].tolist()}


def step_export(args, work: Path) -> dict:
    exported = work / "compressed-tensors"
    log = work / "export.log"
    _, seconds = cli(["export", args.pruned, "--format", "compressed-tensors", "--out", exported], log)
    ours_seconds = child(OURS, [str(args.pruned), str(work / "export-ours.pt")], log)
    plain_seconds = child(PLAIN, [str(exported), str(work / "export-ours.pt"), str(work / "export-plain.pt")], log,
                          isolated=True)
    result = {"pruned": str(args.pruned), "export_seconds": seconds, "load_seconds": [ours_seconds, plain_seconds],
              **compare(work / "export-ours.pt", work / "export-plain.pt")}
    evals = {}
    for name, folder in (("pruned", args.pruned), ("exported", exported)):
        stdout, _ = cli(["eval", folder, "--data", "shakespeare:test", "--windows", args.eval_windows, "--seqlen",
                         args.seqlen, "--json"], log)
        evals[name] = last_json(stdout)["perplexity"]
    result.update(perplexity=evals, perplexity_equal=evals["pruned"] == evals["exported"],
                  eval=f"shakespeare:test, {args.eval_windows} x {args.seqlen}")
    config = json.loads((exported / "config.json").read_text())
    result["quantization_config_format"] = (config.get("quantization_config") or {}).get("format")
    shutil.rmtree(exported)  # a full copy of the model; the logs stay
    return result


def step_remote(args, work: Path) -> dict:
    log = work / "remote.log"
    ours_seconds = child(OURS, [str(args.expanded), str(work / "remote-ours.pt")], log)
    plain_seconds = child(PLAIN, [str(args.expanded), str(work / "remote-ours.pt"), str(work / "remote-plain.pt")],
                          log, isolated=True)
    files = sorted(p.name for p in Path(args.expanded).glob("*.py"))
    return {"expanded": str(args.expanded), "modeling_files": files, "load_seconds": [ours_seconds, plain_seconds],
            **compare(work / "remote-ours.pt", work / "remote-plain.pt")}


def step_lmeval(args, work: Path) -> dict:
    log = work / "lmeval.log"
    scores = {}
    for name, model in (("dense", args.model), ("pruned", args.pruned), ("expanded", args.expanded)):
        if model is None or name not in args.lmeval_models:
            continue
        stdout, seconds = cli(["lm-eval", model, "--tasks", "shakespeare_next_line", "--questions", args.questions,
                               "--batch-size", "8", "--json"], log)
        task = last_json(stdout)["results"]["shakespeare_next_line"]
        scores[name] = {"model": str(model), "seconds": seconds,
                        **{k.split(",")[0]: v for k, v in task.items() if k.startswith(("acc", "acc_norm"))}}
    return {"task": "shakespeare_next_line", "questions": args.questions, "scores": scores}


def step_neurons(args, work: Path) -> dict:
    out = args.out / "neurons"
    log = work / "neurons.log"
    _, seconds = cli(["neurons", args.model, "--data", "shakespeare:test", "--layers", args.layers, "--out", out,
                      "--windows", "16", "--seqlen", args.seqlen, "--tokens", "4096", "--seed", "0", "--ablate",
                      "--fractions", args.fractions, "--ablate-sparsity", "0.9", "--random-seeds", "2",
                      "--calib", "shakespeare:train", "--calib-windows", "8", "--eval-data", "shakespeare:test",
                      "--eval-windows", "4"], log)
    report = json.loads((out / "neurons.json").read_text())
    return {"layers": args.layers, "folder": str(out), "seconds": seconds, "summary": report["summary"],
            "ablation": [{k: r[k] for k in ("rule", "fraction", "seed", "perplexity", "rows")}
                         for r in report["ablation"]]}


STEPS = {"export": step_export, "remote": step_remote, "lmeval": step_lmeval, "neurons": step_neurons}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="the dense model (shipped name or folder)")
    parser.add_argument("--pruned", type=Path, help="a folder written by `sparse-expansion prune` (export, lmeval)")
    parser.add_argument("--expanded", type=Path, help="a folder written by `sparse-expansion expand` (remote, lmeval)")
    parser.add_argument("--out", type=Path, required=True, help="folder for ecosystem.json (and neurons/)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--eval-windows", default="16", help="export: windows of --seqlen tokens evaluated")
    parser.add_argument("--seqlen", default="512", help="tokens per window (export's eval, neurons)")
    parser.add_argument("--questions", default="100", help="lmeval: questions of the built-in task")
    parser.add_argument("--lmeval-models", nargs="+", choices=("dense", "pruned", "expanded"),
                        default=["dense", "pruned", "expanded"], help="lmeval: which models are scored")
    parser.add_argument("--layers", default="4,11", help="neurons: layers measured")
    parser.add_argument("--fractions", default="0.03,0.1", help="neurons: ablated fractions of each layer's rows")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "ecosystem.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for step in args.steps:
        work = Path(tempfile.mkdtemp(prefix=f"ecosystem-{step}-"))
        print(f"{time.strftime('%H:%M')} {step} (logs in {work})", flush=True)
        start = time.process_time()
        result = STEPS[step](args, work)
        result.update(date=time.strftime("%Y-%m-%d %H:%M"), load=os.getloadavg(),
                      driver_cpu_seconds=time.process_time() - start)
        results[step] = result
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(result)[:2000], flush=True)


if __name__ == "__main__":
    main()

"""Whole-model decode and prefill speed: dense against pruned and expanded models, compressed weights.

    python benchmarks/decode/decode_speed.py --runs 5 --threads 1 2 --out runs/decode_speed.jsonl
    python benchmarks/decode/decode_speed.py --summary \
        benchmarks/decode/results/2026-11-27-cpu2/decode_speed.jsonl   # the tables again

Every (variant, threads) pair is its own process (`--worker`), started in turn: all variants once
(A B C ...), then all again, --runs times, each round in a rotated order, so slow phases of a
shared machine fall on every variant alike. A worker loads its model, generates 4 tokens to warm
up, then times
  - decode: 128 new tokens after a 64-token prompt (KV-cached Hugging Face `generate`, greedy,
    end-of-text ignored): tokens per second over the 127 tokens after the first;
  - prefill: the forward pass of a 512-token prompt up to its first new token;
both in wall seconds and in the process's CPU seconds, and its resident memory once loaded.
Prompts are the first 64 and 512 tokens of shakespeare:test. The model folders are made first:

    sparse-expansion prune smollm2-135m --method sparsegpt --sparsity 0.7 --out runs/sg70
    sparse-expansion prune smollm2-135m --method sparsegpt --sparsity 2:4 --out runs/sg24
    sparse-expansion expand smollm2-135m --experts 4 --sparsity 0.7 --out runs/se4-70
    sparse-expansion expand smollm2-135m --experts 16 --sparsity 0.7 --out runs/se16-70
    sparse-expansion expand smollm2-135m --experts 4 --sparsity 2:4 --out runs/se4-24
    sparse-expansion expand smollm2-135m --experts 16 --sparsity 2:4 --out runs/se16-24
    sparse-expansion convert runs/sg70 --bits 8 --out runs/sg70-int8
    sparse-expansion convert runs/sg70 --bits 4 --group-size 32 --out runs/sg70-int4g32
    sparse-expansion convert runs/sg70 --bits 4 --out runs/sg70-int4

int8 / int4 through the fast step (issue 20 part 2), 1 and 2 threads:

    python benchmarks/decode/decode_speed.py --paths fast --runs 3 --threads 1 2 --variants "dense bf16" \
        "dense int8" "dense int4" "SparseGPT 70% bf16" "SparseGPT 70% int8" "SparseGPT 70% int4 g32" \
        "SparseGPT 70% int4 g128" --out runs/quant_step.jsonl
    python benchmarks/decode/decode_speed.py --fast-summary runs/quant_step.jsonl

**Fast decode step against Hugging Face** (`--paths fast hf`, issue 20): the same timings through
`decode.generate(path=...)`: "fast" is the C++ decode step, "hf" Hugging Face `generate` on the same
modules. A fast worker also splits one decode step's CPU time: 127 steps after the 64-token prompt
(with the Python loop around them), then the same 127 steps' linears alone
(`FastDecoder.partial(..., without_linears=False)`) and everything but the linears at position 127
(attention, norms, rotary, routing, residuals); "outside" = whole step - linears alone.

    python benchmarks/decode/decode_speed.py --paths fast hf --runs 3 --threads 1 2 \
        --variants "dense fp32" "dense bf16" "SparseGPT 70% bf16" "SE-16 70% bf16" --out runs/fast.jsonl
    python benchmarks/decode/decode_speed.py --fast-summary runs/fast.jsonl

**Gemma 3 270M** (issues 20 and 21; one command, `--preset gemma3`: dense and SparseGPT 70%, float32
and bfloat16, fast step against Hugging Face in one process per variant, 1 thread, 2 alternations).
The fast worker also times the LM head alone (`FastDecoder(layers=0)`: embedding, final norm and the
262,144 x 640 head, the same kernels and threads): "LM head ms" in the summary. The pruned folder
(speed does not depend on calibration quality, so 8 x 256 windows suffice):

    sparse-expansion prune gemma3-270m --method sparsegpt --sparsity 0.7 --calib-windows 8 --seqlen 256 \
        --out runs/gemma3-sg70
    python benchmarks/decode/decode_speed.py --preset gemma3 --out runs/gemma3_decode.jsonl

The summary gives medians: with 1 thread of CPU time (immune to being descheduled by other jobs)
and of wall time; ratios are to dense fp32, to dense bf16 as torch runs it, and to dense bf16 with
its linears on the C++ bfloat16 decode kernel (kernels.DecodeLinear, what `--weights auto` gives a
bfloat16 model on this CPU), at the same threads: the last credits sparsity with only what it adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sparse_expansion import benchmarking

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository

#: name -> (model, --dtype, --weights). "half" storage is bfloat16: on this CPU torch's bf16 runs the
#: dense parts (attention, head) at least as fast as fp32, and prefill through AMX.
VARIANTS = {
    "dense fp32": ("smollm2-135m", "float32", "dense"),
    "dense bf16": ("smollm2-135m", "bfloat16", "dense"),
    "dense bf16, kernels": ("smollm2-135m", "bfloat16", "compressed"),  # DecodeLinear: no sparsity
    "SparseGPT 70% fp32": ("runs/sg70", "float32", "compressed"),
    "SparseGPT 70% bf16": ("runs/sg70", "bfloat16", "compressed"),
    "SparseGPT 2:4 fp32": ("runs/sg24", "float32", "compressed"),
    "SparseGPT 2:4 bf16": ("runs/sg24", "bfloat16", "compressed"),
    "SE-4 70% fp32": ("runs/se4-70", "float32", "compressed"),
    "SE-4 70% bf16": ("runs/se4-70", "bfloat16", "compressed"),
    "SE-16 70% fp32": ("runs/se16-70", "float32", "compressed"),
    "SE-16 70% bf16": ("runs/se16-70", "bfloat16", "compressed"),
    "SE-4 2:4 fp32": ("runs/se4-24", "float32", "compressed"),
    "SE-4 2:4 bf16": ("runs/se4-24", "bfloat16", "compressed"),
    "SE-16 2:4 fp32": ("runs/se16-24", "float32", "compressed"),
    "SE-16 2:4 bf16": ("runs/se16-24", "bfloat16", "compressed"),
    # int8 / int4 values (issue 20 part 2): the fast step runs them in the act8 arithmetic (csrc/quant.h). Dense:
    # quantized on load (int8 per row, int4 in groups of 128); SparseGPT: `convert` of runs/sg70 (docstring)
    "dense int8": ("smollm2-135m", "bfloat16", "int8"),
    "dense int4": ("smollm2-135m", "bfloat16", "int4"),
    "SparseGPT 70% int8": ("runs/sg70-int8", "bfloat16", "compressed"),
    "SparseGPT 70% int4 g32": ("runs/sg70-int4g32", "bfloat16", "compressed"),
    "SparseGPT 70% int4 g128": ("runs/sg70-int4", "bfloat16", "compressed"),
    # speed-only stand-ins (benchmarks/decode/speed_standin.py; prune --method magnitude): the format, sparsity
    # and routes of the real folders, made in minutes on a busy machine; their perplexity means nothing
    "magnitude 70% bf16": ("runs/mag70", "bfloat16", "compressed"),
    "SE-16 70% bf16 (stand-in)": ("runs/se16-70-standin", "bfloat16", "compressed"),
    # Gemma 3 270M (a 262,144-entry LM head, tied to the embedding: 63% of the parameters)
    "Gemma 3 dense fp32": ("gemma3-270m", "float32", "dense"),
    "Gemma 3 dense bf16, kernels": ("gemma3-270m", "bfloat16", "compressed"),
    "Gemma 3 SparseGPT 70% fp32": ("runs/gemma3-sg70", "float32", "compressed"),
    "Gemma 3 SparseGPT 70% bf16": ("runs/gemma3-sg70", "bfloat16", "compressed"),
}
#: one-command studies: the arguments they set (anything given on the command line as well wins)
PRESETS = {
    "gemma3": dict(variants=[v for v in VARIANTS if v.startswith("Gemma 3")], paths=["fast", "hf"], threads=[1],
                   same_process=2, runs=1),
}
PROMPT, NEW, PREFILL = 64, 128, 512


def step_split(model, prompt) -> dict:
    """CPU ms per token of the fast step: whole (with the Python loop), its linears alone, all but them."""
    from sparse_expansion.decode import FastDecoder

    decoder = FastDecoder(model, PROMPT + NEW)
    token, steps = int(decoder.prefill(prompt).argmax()), NEW - 1
    start = time.process_time()
    for pos in range(PROMPT, PROMPT + steps):
        token = int(decoder.step(token, pos).argmax())
    whole = time.process_time() - start
    start = time.process_time()
    decoder.partial(steps, False)
    linears = time.process_time() - start
    start = time.process_time()
    decoder.partial(steps, True, PROMPT + NEW // 2 - 1)  # the mean position of the decode
    rest = time.process_time() - start
    head = FastDecoder(model, PROMPT + NEW, layers=0)  # the embedding, final norm and LM head alone
    start = time.process_time()
    for pos in range(PROMPT, PROMPT + steps):
        head.step(token, pos)
    head_alone = time.process_time() - start
    ms = 1e3 / steps
    return {"step_cpu_ms": whole * ms, "linears_cpu_ms": linears * ms, "outside_cpu_ms": (whole - linears) * ms,
            "no_linears_cpu_ms": rest * ms, "head_cpu_ms": head_alone * ms}


def worker(model_name: str, dtype_name: str, weights: str, threads: int, paths: tuple[str, ...] = ("hf",),
           rounds: int = 1) -> list[dict]:
    """One row per (round, path): the paths alternate inside the process, rounds times (the model is
    loaded once; on a busy machine loading costs more than the timings)."""
    import torch

    torch.set_num_threads(threads)
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.decode import generate
    from sparse_expansion.kernels import ops
    from sparse_expansion.models import load_causal_lm
    from sparse_expansion.resources import peak_rss_mb, rss_mb
    from sparse_expansion.storage import weights_in_memory

    start = time.perf_counter()
    model, tokenizer = load_causal_lm(model_name, "cpu", getattr(torch, dtype_name), weights=weights)
    load_seconds = time.perf_counter() - start
    loaded = rss_mb()
    tokens = corpus_tokens("shakespeare:test", tokenizer)
    short, long = tokens[:PROMPT].reshape(1, -1), tokens[:PREFILL].reshape(1, -1)
    pad = tokenizer.eos_token_id
    in_memory = weights_in_memory(model)
    rows = []
    for path in paths:
        generate(model, short, 4, path=path, pad_token_id=pad, ignore_eos=True)  # warm-up
    for inner in range(rounds):
        for path in paths if inner % 2 == 0 else paths[::-1]:
            decode = generate(model, short, NEW, path=path, pad_token_id=pad, ignore_eos=True)
            prefill = generate(model, long, 1, path=path, pad_token_id=pad, ignore_eos=True) if inner == 0 else None
            split = step_split(model, short) if decode["decode_path"] == "fast" else {}
            rows.append({
                "model": model_name, "dtype": dtype_name, "weights": in_memory, "threads": threads,
                "inner_round": inner,
                "decode_path": decode["decode_path"], **split,
                "kernels": ops.backend() if in_memory == "compressed" else None, "load_seconds": load_seconds,
                "loaded_rss_mb": loaded, "peak_rss_mb": peak_rss_mb(), "new_tokens": decode["new_tokens"],
                "decode_tokens_per_second": decode["decode_tokens_per_second"],
                "decode_tokens_per_cpu_second": decode["decode_tokens_per_cpu_second"],
                "prefill_seconds": prefill["prefill_seconds"] if prefill else None,
                "prefill_cpu_seconds": prefill["prefill_cpu_seconds"] if prefill else None,
                "text_head": decode["new_ids"][:8].tolist()})
    return rows


def step_parts(model_name: str, dtype_name: str, weights: str, repeats: int = 7) -> dict:
    """Where one decode step's time goes (1 thread, CPU ms, medians): the attention projections,
    the MLP blocks and the LM head run on their own for one token, layer after layer as decoding
    does, and the whole forward pass of one token after a 64-token prompt; the rest of the step
    is attention itself, norms, rotary embeddings, the cache and Python."""
    import torch

    torch.set_num_threads(1)
    from sparse_expansion.arch import decoder_layers
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.models import load_causal_lm
    from sparse_expansion.resources import cpu_ms

    model, tokenizer = load_causal_lm(model_name, "cpu", getattr(torch, dtype_name), weights=weights)
    layers = decoder_layers(model)
    hidden = model.config.hidden_size
    x = torch.randn(1, 1, hidden, dtype=model.dtype)

    prompt = corpus_tokens("shakespeare:test", tokenizer)[:PROMPT].reshape(1, -1)
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
        token = torch.tensor([[tokenizer.eos_token_id or 0]])

        def step():  # the cache grows by one position a call: 64 -> 72 tokens over the timings
            model(token, past_key_values=cache, use_cache=True)

        attention = [getattr(layer.self_attn, n) for layer in layers for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        parts = {"attention projections": cpu_ms(lambda: [p(x) for p in attention], repeats),
                 # a fresh input per block: the shared router would otherwise reuse the last routes
                 "MLP blocks": cpu_ms(lambda: [layer.mlp(x.clone()) for layer in layers], repeats),
                 "LM head": cpu_ms(lambda: model.lm_head(x), repeats),
                 "whole step": cpu_ms(step, repeats)}
    parts["rest of the step"] = parts["whole step"] - sum(v for k, v in parts.items() if k != "whole step")
    return parts


def run_worker(name: str, threads: int, paths: tuple[str, ...] = ("hf",), rounds: int = 1) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, __file__, "--worker", name, "--threads", str(threads), "--paths", *paths,
                           "--inner-rounds", str(rounds)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{name} ({threads} threads, {paths}) failed:\n{done.stderr[-2000:]}")
    return [{"variant": name, **row} for row in json.loads(done.stdout.strip().splitlines()[-1])]


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def ratio(value: float, base: float | None) -> str:
    """A ratio cell; "-" when the baseline was not among the variants run."""
    return f"{value / base:.2f}x" if base else "-"


def summary(rows: list[dict]) -> str:
    by: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        by.setdefault((row["variant"], row["threads"]), []).append(row)

    def med(name: str, threads: int, key: str) -> float | None:
        values = [r[key] for r in by.get((name, threads), []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    lines = []
    for threads in sorted({t for _, t in by}):
        clock = "CPU" if threads == 1 else "wall"
        tps_key = "decode_tokens_per_cpu_second" if threads == 1 else "decode_tokens_per_second"
        pre_key = "prefill_cpu_seconds" if threads == 1 else "prefill_seconds"
        dense32, dense16 = med("dense fp32", threads, tps_key), med("dense bf16", threads, tps_key)
        dense16k = med("dense bf16, kernels", threads, tps_key)
        pre32 = med("dense fp32", threads, pre_key)
        lines += [f"**{threads} thread{'s' if threads > 1 else ''}** ({clock} time; medians of "
                  f"{min(len(v) for (n, t), v in by.items() if t == threads)}+ runs)", "",
                  "| variant | decode tok/s | vs dense fp32 | vs dense bf16 | vs dense bf16, kernels "
                  "| decode tok/s (wall) | prefill-512 s | vs dense fp32 | loaded RSS MB |", "|---" * 9 + "|"]
        for name in VARIANTS:
            if (name, threads) not in by:
                continue
            tps, wall, pre = med(name, threads, tps_key), med(name, threads, "decode_tokens_per_second"), \
                med(name, threads, pre_key)
            rss = med(name, threads, "loaded_rss_mb")
            lines.append(f"| {name} | {tps:.1f} | {ratio(tps, dense32)} | {ratio(tps, dense16)} | "
                         f"{ratio(tps, dense16k)} | {wall:.1f} | {pre:.2f} | {ratio(pre, pre32)} | {rss:.0f} |")
        lines.append("")
    return "\n".join(lines)


def fast_summary(rows: list[dict]) -> str:
    """Fast step against Hugging Face per variant: medians of process-CPU tok/s (1 thread) and wall
    tok/s, the step's CPU split, and the 2-thread / 1-thread wall ratio of each path."""
    by: dict[tuple, list[dict]] = {}
    for row in rows:
        by.setdefault((row["variant"], row.get("decode_path", "hf"), row["threads"]), []).append(row)

    def med(key: tuple, field: str) -> float | None:
        values = [r[field] for r in by.get(key, []) if r.get(field) is not None]
        return statistics.median(values) if values else None

    def cell(value: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    lines = []
    for threads in sorted({k[2] for k in by}):
        lines += [f"**{threads} thread{'s' if threads > 1 else ''}** (medians of "
                  f"{min(len(v) for k, v in by.items() if k[2] == threads)}+ runs)", "",
                  "| variant | hf tok/s (CPU) | fast tok/s (CPU) | fast / hf | hf tok/s (wall) | fast tok/s (wall) "
                  "| fast step ms (CPU) | linears alone ms | outside ms | all but linears ms | LM head ms |",
                  "|---" * 11 + "|"]
        for name in dict.fromkeys(k[0] for k in by):
            hf, fast = (name, "hf", threads), (name, "fast", threads)
            if hf not in by and fast not in by:
                continue
            hf_cpu, fast_cpu = med(hf, "decode_tokens_per_cpu_second"), med(fast, "decode_tokens_per_cpu_second")
            cells = [cell(hf_cpu), cell(fast_cpu), cell(fast_cpu / hf_cpu if hf_cpu and fast_cpu else None, "{:.2f}x"),
                     cell(med(hf, "decode_tokens_per_second")), cell(med(fast, "decode_tokens_per_second"))]
            cells += [cell(med(fast, f), "{:.2f}") for f in ("step_cpu_ms", "linears_cpu_ms", "outside_cpu_ms",
                                                            "no_linears_cpu_ms", "head_cpu_ms")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if len({k[2] for k in by}) > 1:
        lines += ["**2 threads / 1 thread** (wall tok/s)", "", "| variant | hf | fast |", "|---|---|---|"]
        for name in dict.fromkeys(k[0] for k in by):
            ratios = []
            for path in ("hf", "fast"):
                one, two = (med((name, path, t), "decode_tokens_per_second") for t in (1, 2))
                ratios.append(cell(two / one if one and two else None, "{:.2f}x"))
            lines.append(f"| {name} | {ratios[0]} | {ratios[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="names from VARIANTS")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "decode_speed.jsonl",
                        help="raw rows, appended (default runs/decode_speed.jsonl; commit a run as "
                             "results/DATE-MACHINE/decode_speed.jsonl)")
    parser.add_argument("--summary", type=Path, help="only print the tables of an earlier --out file")
    parser.add_argument("--paths", nargs="+", default=["hf"], choices=("fast", "hf"),
                        help="decode paths to time (decode.generate(path=...)); default hf, as before issue 20")
    parser.add_argument("--fast-summary", type=Path, help="only print the fast-vs-hf tables of an earlier --out file")
    parser.add_argument("--same-process", type=int, default=0, metavar="N",
                        help="time all --paths in one process per (variant, threads), alternating N times "
                             "(instead of one process per path)")
    parser.add_argument("--inner-rounds", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--parts", action="store_true",
                        help="instead: where one decode step's time goes, per variant (1 thread, CPU ms)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a one-command study (see the module docstring)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.preset:
        given = {a.dest for a in parser._actions if any(o in sys.argv for o in a.option_strings)}
        for key, value in PRESETS[args.preset].items():
            if key not in given:
                setattr(args, key, value)
    if args.worker:
        result = (step_parts(*VARIANTS[args.worker]) if args.parts
                  else worker(*VARIANTS[args.worker], args.threads[0], tuple(args.paths), args.inner_rounds))
        print(json.dumps(result))
        return
    if args.parts:
        print("| variant | " + " | ".join(("attention projections", "MLP blocks", "LM head", "rest of the step",
                                            "whole step")) + " |\n|---|---|---|---|---|---|")
        for name in args.variants:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            done = subprocess.run([sys.executable, __file__, "--worker", name, "--parts"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=1800, check=True)
            parts = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {name} | " + " | ".join(f"{parts[k]:.1f}" for k in ("attention projections", "MLP blocks",
                                                                          "LM head", "rest of the step",
                                                                          "whole step")) + " |", flush=True)
        return
    if args.summary:
        print(summary([json.loads(line) for line in args.summary.read_text().splitlines() if line.strip()]))
        return
    if args.fast_summary:
        print(fast_summary([json.loads(line) for line in args.fast_summary.read_text().splitlines() if line.strip()]))
        return
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    for name in args.variants:
        folder = VARIANTS[name][0]
        if folder.startswith("runs/") and not (ROOT / folder / "sparse_expansion.json").is_file():
            parser.error(f"{folder} is missing: make it first (see the module docstring)")
    print(f"# {benchmarking.machine()}; load before: {load()}", file=sys.stderr)
    rows = []
    groups = [tuple(args.paths)] if args.same_process else [(path,) for path in args.paths]
    pairs = [(name, t, paths) for t in args.threads for name in args.variants for paths in groups]
    with args.out.open("a") as raw:
        for run in range(args.runs):
            shift = run % len(pairs)
            for name, threads, paths in pairs[shift:] + pairs[:shift]:
                for result in run_worker(name, threads, paths, max(args.same_process, 1)):
                    row = {**result, "run": run, "load_average": load(), "time": time.time()}
                    raw.write(json.dumps(row) + "\n")
                    raw.flush()
                    rows.append(row)
                    print(f"run {run} {name} {threads}t {row['decode_path']}: "
                          f"{row['decode_tokens_per_cpu_second']:.1f} tok/cpu-s, "
                          f"{row['decode_tokens_per_second']:.1f} tok/s, outside {row.get('outside_cpu_ms')}, "
                          f"load {row['load_average']}", file=sys.stderr, flush=True)
    print(f"# load after: {load()}", file=sys.stderr)
    print(fast_summary(rows) if args.paths != ["hf"] else summary(rows))


if __name__ == "__main__":
    main()

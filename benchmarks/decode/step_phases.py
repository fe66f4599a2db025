"""Where a fast decode step's time goes, phase by phase and thread by thread: what each thread spends
computing each phase (the norms and routes before it included) and waiting at the barrier that ends it.

    python benchmarks/decode/step_phases.py FOLDER [--threads 1 2] [--rounds 2] [--new-tokens 128]

A round decodes `--new-tokens` greedily after a 64-token shakespeare:test prompt at each thread count in
turn (the counts alternate from round to round), with the step's profile on (FastDecoder.phase_profile:
wall clock, so other work on the machine shows). Prints, per thread count, ms a step for every phase:
computing on each thread, then waiting on each; and the medians over rounds of decode tokens/s."""
from __future__ import annotations

import argparse
import statistics

import torch

PROMPT = 64


def profile_once(model, ids: torch.Tensor, threads: int, new_tokens: int) -> dict:
    from sparse_expansion.decode import fast_generate

    torch.set_num_threads(threads)
    result = fast_generate(model, ids, new_tokens, ignore_eos=True, profile=True)
    return {"tok_s": result["decode_tokens_per_second"], "steps": result["step_profile"]["steps"],
            "phases": result["step_profile"]["phase_wall_seconds"]}


def table(runs: list[dict], threads: int) -> list[str]:
    """Markdown rows: phase | work ms a step on each thread | wait ms a step on each thread (medians over runs)."""
    phases = runs[0]["phases"]
    names = " / ".join(f"thread {t}" for t in range(threads))
    lines = [f"| phase ({threads} thread{'s' if threads > 1 else ''}) | computing, ms a step ({names}) | "
             f"waiting at its barrier ({names}) |", "|---|---|---|"]
    for name in phases:
        cells = []
        for kind in ("work", "wait"):
            per_thread = [statistics.median(1e3 * run["phases"][name][t][kind] / run["steps"] for run in runs)
                          for t in range(threads)]
            cells.append(" / ".join(f"{v:.3f}" for v in per_thread))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.models import load_causal_lm

    model, tokenizer = load_causal_lm(args.folder, "cpu", torch.float32, weights="auto")
    ids = corpus_tokens("shakespeare:test", tokenizer)[:PROMPT].reshape(1, -1)
    profile_once(model, ids, args.threads[0], 8)  # warm-up: kernels built, caches filled
    runs: dict[int, list[dict]] = {t: [] for t in args.threads}
    for round_ in range(args.rounds):
        for threads in args.threads if round_ % 2 == 0 else args.threads[::-1]:
            runs[threads].append(profile_once(model, ids, threads, args.new_tokens))
    print(f"# {args.folder}: {args.new_tokens} new tokens after {PROMPT}, {args.rounds} round(s), medians\n")
    for threads in args.threads:
        rounds = ", ".join(f"{r['tok_s']:.1f}" for r in runs[threads])
        print(f"decode {statistics.median(r['tok_s'] for r in runs[threads]):.1f} tok/s at {threads} thread(s) "
              f"(rounds: {rounds})\n")
        print("\n".join(table(runs[threads], threads)) + "\n")


if __name__ == "__main__":
    main()

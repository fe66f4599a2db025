"""Eval tokens/s of an expanded model against SparseGPT's on one device (issue 20, "On a GPU").

Expanded models on CUDA hold their experts dense. Issue 20 measured them, multiplied expert by expert, at
0.17x SparseGPT's eval tokens/s on an H100 and asks for >= 0.8x. This
script evaluates, in one process and with the rounds alternated, a SparseGPT folder and an expanded
folder twice: with the experts as one grouped GEMM (`expand.module.routed_matmul`, torch's grouped_mm)
and as one matmul per expert (the path before it), and prints tokens/s, their ratios and perplexity.

    python benchmarks/gpu/expert_eval.py --device cuda --out gpu/expert_eval.jsonl            # no files needed
    python benchmarks/gpu/expert_eval.py --device cuda --model smollm2-135m --out ...        # the real model
    python benchmarks/gpu/expert_eval.py --device cuda --sparsegpt DIR --expanded DIR --out ...

Without folders it builds them first on the same device (SparseGPT 70% and 16 experts at 70%, 32 x 512
calibration tokens) under --work. `--model random` (the default) is a randomly initialised model of
SmolLM2-135M's shapes, calibrated and evaluated on random token ids: a GPU machine that cannot hold the
shipped model still runs it, and the speed depends on the shapes, not the values (its perplexities mean
nothing). A model name or folder is compressed through the CLI on shakespeare:train and evaluated on
--data. Timing: each model is loaded once, warmed by one batch, then every round times
`evaluate.perplexity` over the windows with the device synchronised before and after. Runs from the
repository root without installing (the script puts src/ on the path)."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from sparse_expansion.cli import main as cli  # noqa: E402
from sparse_expansion.data import corpus_tokens, evaluation_windows  # noqa: E402
from sparse_expansion.evaluate import perplexity  # noqa: E402
from sparse_expansion.expand import module as expert_module  # noqa: E402
from sparse_expansion.expand.module import SparseExpertLinear  # noqa: E402
from sparse_expansion.models import load_model  # noqa: E402

# SmolLM2-135M's shapes (its config.json), for --model random.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


def build_folders(args: argparse.Namespace) -> tuple[str, str]:
    """SparseGPT at --sparsity and --experts experts at --sparsity, compressed on --device."""
    work = Path(args.work)
    sparsegpt, expanded = work / "sparsegpt", work / f"se{args.experts}"
    if args.model == "random":
        build_random(args, sparsegpt, expanded)
        return str(sparsegpt), str(expanded)
    common = ["--sparsity", str(args.sparsity), "--calib", args.calib, "--calib-windows", str(args.calib_windows),
              "--seqlen", str(args.seqlen), "--device", args.device]
    for folder, command in ((sparsegpt, ["prune", args.model, "--method", "sparsegpt"]),
                            (expanded, ["expand", args.model, "--experts", str(args.experts)])):
        if not folder.exists():
            start = time.perf_counter()
            if cli([*command, *common, "--out", str(folder)]) != 0:
                raise SystemExit(f"building {folder} failed")
            print(f"built {folder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return str(sparsegpt), str(expanded)


def build_random(args: argparse.Namespace, sparsegpt: Path, expanded: Path) -> None:
    """Both folders from one random SmolLM2-shaped Llama (--layers of its 30), calibrated on random tokens."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sparse_expansion.artifact import save_artifact
    from sparse_expansion.expand import ExpandConfig
    from sparse_expansion.io import atomic_output_dir
    from sparse_expansion.methods import compress
    from sparse_expansion.prune import SparseGPTConfig, parse_sparsity

    sparsity = parse_sparsity(str(args.sparsity))
    config = LlamaConfig(**{**SMOLLM2_SHAPE, "num_hidden_layers": args.layers})
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    windows = random_windows(config.vocab_size, args.calib_windows, args.seqlen, seed=0)
    sparsegpt.parent.mkdir(parents=True, exist_ok=True)
    for folder, method in ((sparsegpt, SparseGPTConfig(sparsity)),
                           (expanded, ExpandConfig(experts=args.experts, sparsity=sparsity))):
        if folder.exists():
            continue
        start = time.perf_counter()
        model = copy.deepcopy(base)
        record = compress(model, windows, method, device=args.device, progress=False)
        with atomic_output_dir(folder) as tmp:
            save_artifact(tmp, model.cpu(), record={"kind": "random SmolLM2 shape", "method": record["method"]})
        print(f"built {folder} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def random_windows(vocab: int, n: int, seqlen: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_eval(model, windows: torch.Tensor, args: argparse.Namespace) -> dict:
    synchronize(args.device)
    start = time.perf_counter()
    result = perplexity(model, windows, batch_size=args.batch_size, device=args.device, progress=False)
    synchronize(args.device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": result["tokens"] / seconds, "perplexity": result["perplexity"]}


def run(args: argparse.Namespace) -> list[dict]:
    sparsegpt, expanded = (args.sparsegpt, args.expanded) if args.sparsegpt else build_folders(args)
    dtype = getattr(torch, args.dtype)
    models = {}
    for name, folder in (("sparsegpt", sparsegpt), ("expanded", expanded)):
        models[name], tokenizer = load_model(folder, args.device, dtype, weights=args.weights)
    dense_copies = sum(m.uses_dense_weights for m in models["expanded"].modules() if isinstance(m, SparseExpertLinear))
    if tokenizer is None:  # a random model: random token ids (seeded apart from the calibration's)
        windows = random_windows(models["expanded"].config.vocab_size, args.windows, args.seqlen, seed=1)
    else:
        windows = evaluation_windows(corpus_tokens(args.data, tokenizer), args.seqlen, args.windows)
    variants = [("SparseGPT", "sparsegpt", True), ("experts, grouped GEMM", "expanded", True),
                ("experts, one matmul per expert", "expanded", False)]
    for _label, name, grouped in variants:  # warm-up: kernels chosen, memory pools filled
        with mock.patch.object(expert_module, "_GROUPED_MM", expert_module._GROUPED_MM if grouped else None):
            perplexity(models[name], windows[: args.batch_size], batch_size=args.batch_size, device=args.device,
                       progress=False)
    rows = []
    for round_ in range(args.rounds):
        for label, name, grouped in variants:
            with mock.patch.object(expert_module, "_GROUPED_MM", expert_module._GROUPED_MM if grouped else None):
                row = timed_eval(models[name], windows, args)
            rows.append({"round": round_, "variant": label, "folder": sparsegpt if name == "sparsegpt" else expanded,
                         "device": args.device, "device_name": device_name(args.device), "dtype": args.dtype,
                         "torch": torch.__version__, "windows": args.windows, "seqlen": args.seqlen,
                         "batch_size": args.batch_size, "random_weights": tokenizer is None,
                         "grouped_mm_in_torch": expert_module._GROUPED_MM is not None,
                         "expert_linears_dense": dense_copies, **row})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"


def table(rows: list[dict]) -> str:
    """Median tokens/s per variant, and its ratio to SparseGPT's."""
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)

    def median(values: list[float]) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    base = median([r["tokens_per_s"] for r in by_variant["SparseGPT"]])
    lines = ["| variant | eval tokens/s (median) | rounds | vs SparseGPT | perplexity |", "|---|---|---|---|---|"]
    for variant, group in by_variant.items():
        speed = median([r["tokens_per_s"] for r in group])
        ppl = group[0]["perplexity"]
        lines.append(f"| {variant} | {speed:,.0f} | {len(group)} | {speed / base:.2f}x | {ppl:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="random", help="what to compress when no folders are given: 'random' "
                        "(SmolLM2's shapes, random weights and tokens) or a model name or folder")
    parser.add_argument("--layers", type=int, default=30, help="--model random: decoder layers (SmolLM2 has 30)")
    parser.add_argument("--sparsegpt", help="a pruned folder (with --expanded); default: built under --work")
    parser.add_argument("--expanded", help="an expanded folder (with --sparsegpt)")
    parser.add_argument("--work", default="expert_eval_folders", help="where built folders go")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--calib", default="shakespeare:train", help="calibration text for the built folders")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--data", default="shakespeare:test")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--weights", default="auto", help="as `eval --weights` (auto: experts dense on a GPU, "
                        "compressed on a CPU; dense: a dense copy anywhere)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="JSON lines, one per timed evaluation")
    args = parser.parse_args(argv)
    if bool(args.sparsegpt) != bool(args.expanded):
        parser.error("give both --sparsegpt and --expanded, or neither")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""llama.cpp side by side (issue 20 parts 5 and 6): decode, prefill, memory and perplexity of our
variants against llama.cpp on the same model, the same tokens and the same threads.

    benchmarks/peer_llamacpp/setup.sh ../peer-venv                         # once: llama-cpp-python 0.3.36
    python benchmarks/peer_llamacpp/peer.py all --venv ../peer-venv         # prepare + run + report

Steps (each its own subcommand; `all` runs the three):
  prepare  makes what a config names and is missing: GGUFs through llama.cpp's own convert_hf_to_gguf.py
           (from the sdist the venv was built from) and quantizer, our folders through `sparse-expansion
           prune/expand` (their default calibration: 32 x 512 tokens of shakespeare:train), and the
           inputs: the prompts (first 64 / 512 tokens of shakespeare:test, as text for `generate --prompt`
           and as the ids that text tokenises to, for llama.cpp) and the 16 x 512 evaluation windows of
           `sparse-expansion eval --data shakespeare:test --windows 16 --seqlen 512` (its own functions).
  run      rounds alternated: every (variant, threads) once per round, engines interleaved, each round in
           a rotated order; one child process per measurement: decode (128 new tokens after the 64-token
           prompt) and prefill (the 512-token prompt and its first token). Ours through our public CLI
           (`generate --json --ignore-eos`, `eval --json`); llama.cpp through llama_worker.py in the peer
           venv. Perplexity once per variant (deterministic), at the highest thread count. Peak RSS of
           every child from its VmHWM, polled. Rows are appended to OUT/results.jsonl.
  report   OUT/report.md and OUT/pareto.png from OUT/results.jsonl alone (medians over rounds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sparse_expansion import benchmarking

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its PyPI name
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_WORK = ROOT / "runs" / "peer_llamacpp"
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: what `generate` picks with no --dtype
WEIGHTS = ("fast", "auto", "compressed", "dense", "int8", "int4")  # int8 / int4: on load; fast: generate's default
ENGINES = ("ours", "llama.cpp")
KEYS = {"name", "engine", "folder", "make", "script", "dtype", "weights", "gguf", "convert", "pre", "quantize",
        "perplexity"}
EVAL = {"data": "shakespeare:test", "windows": 16, "seqlen": 512}


class ConfigError(ValueError):
    """A variant config that cannot be run: the message names the block and the fix."""


@dataclass
class Variant:
    name: str
    engine: str
    folder: str | None = None        # ours: a shipped name or a folder
    make: list[str] | None = None    # ours: `sparse-expansion` argv that makes `folder`
    script: list[str] | None = None  # ours: a script of this folder that makes `folder`
    dtype: str | None = None
    weights: str | None = None
    gguf: str | None = None          # llama.cpp: a file, or shipped:NAME
    convert: str | None = None       # llama.cpp: HF folder / shipped name -> F16 GGUF
    pre: str | None = None           # llama.cpp: the BPE pre-tokenizer when the converter does not know it
    quantize: list[str] | None = None  # llama.cpp: [source GGUF, TYPE]
    perplexity: bool = True


@dataclass
class Config:
    path: Path
    tokenizer: str
    base: str
    variants: list[Variant]


def load_config(path: Path, work: Path = DEFAULT_WORK) -> Config:
    """A TOML file of [[variant]] blocks, {work} expanded; refused in one line when a block is wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    blocks = raw.get("variant")
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{path} has no [[variant]] blocks; add at least one")
    expand = lambda value: value.replace("{work}", str(work)) if isinstance(value, str) else value  # noqa: E731
    variants, seen = [], set()
    for i, block in enumerate(blocks):
        where = f"{path} [[variant]] #{i + 1}"
        unknown = set(block) - KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; use {sorted(KEYS)}")
        if "name" not in block or block["name"] in seen:
            raise ConfigError(f"{where}: every variant needs a unique name")
        seen.add(block["name"])
        if block.get("engine") not in ENGINES:
            raise ConfigError(f"{where}: engine must be one of {ENGINES}")
        values = {k: ([expand(x) for x in v] if isinstance(v, list) else expand(v)) for k, v in block.items()}
        variant = Variant(**values)
        if variant.engine == "ours":
            if not variant.folder or variant.dtype not in DTYPES or variant.weights not in WEIGHTS:
                raise ConfigError(f"{where}: an 'ours' variant needs folder, dtype in {DTYPES} and weights in "
                                  f"{WEIGHTS}")
            if variant.gguf or variant.convert or variant.quantize:
                raise ConfigError(f"{where}: gguf / convert / quantize are llama.cpp keys")
        else:
            if not variant.gguf or variant.folder or variant.dtype or variant.weights or variant.make:
                raise ConfigError(f"{where}: a llama.cpp variant needs gguf and no folder / dtype / weights / make")
            if variant.quantize is not None and len(variant.quantize) != 2:
                raise ConfigError(f"{where}: quantize = [source GGUF, TYPE]")
        variants.append(variant)
    unknown = set(raw) - {"variant", "tokenizer", "base"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; use tokenizer, base and [[variant]]")
    base = raw.get("base", variants[0].name)
    if base not in seen:
        raise ConfigError(f"{path}: base '{base}' is not a variant name; name the row the ratios divide by")
    return Config(Path(path), expand(raw.get("tokenizer", "smollm2-135m")), base, variants)


# --- prepare -----------------------------------------------------------------------------------------

def our_env(threads: int | None = None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sparse_expansion.cli", *args]


def resolve_folder(name_or_path: str) -> Path:
    from sparse_expansion.models import resolve_model_path

    return Path(resolve_model_path(name_or_path))


def gguf_path(variant: Variant) -> Path:
    if variant.gguf.startswith("shipped:"):
        from sparse_expansion.models import shipped_gguf  # the one place that knows where the file lives

        return shipped_gguf(variant.gguf.split(":", 1)[1])
    return Path(variant.gguf)


def llama_sources(venv: Path) -> Path:
    found = sorted(venv.glob("src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise SystemExit(f"peer.py: no llama.cpp sources under {venv}/src; "
                         f"run benchmarks/peer_llamacpp/setup.sh {venv}")
    return found[-1].parent


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"peer.py: {venv} holds no site-packages; run benchmarks/peer_llamacpp/setup.sh {venv}")
    return found[-1]


def venv_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"peer.py: {python} is missing; run benchmarks/peer_llamacpp/setup.sh {venv}")
    return python


def run_logged(argv: list[str], log: Path, env: dict | None = None) -> None:
    print(f"$ {' '.join(map(str, argv))}   (log {log})", file=sys.stderr, flush=True)
    with log.open("w") as handle:
        done = subprocess.run(argv, cwd=ROOT, env=env or our_env(), stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"peer.py: {' '.join(map(str, argv[:6]))} ... failed; see {log}")


def convert_to_gguf(venv: Path, source: str, out: Path, logs: Path, pre: str | None = None) -> None:
    """llama.cpp's convert_hf_to_gguf.py, with its own gguf-py, run by our python (it needs torch and
    transformers, which the peer venv does not carry). Written to a temporary name, then renamed."""
    folder = resolve_folder(source)
    sources = llama_sources(venv)
    tmp = out.with_name(f".{out.name}.tmp")
    env = {**our_env(), "PYTHONPATH": str(sources / "gguf-py") + os.pathsep + our_env()["PYTHONPATH"]}
    run_logged([sys.executable, str(HERE / "convert_gguf.py"), str(sources), str(folder), "--outfile", str(tmp),
                "--outtype", "f16", *(["--pre", pre] if pre else []), "--after", str(site_packages(venv))],
               logs / f"convert-{out.stem}.log", env)
    os.replace(tmp, out)


def prepare(config: Config, venv: Path, work: Path) -> Path:
    """Make every missing artifact of the config, then the inputs both engines read."""
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    for variant in config.variants:  # scripts first: a converted GGUF may start from their folder
        if variant.script and not Path(variant.folder).is_dir():
            tmp = Path(variant.folder + ".tmp")
            run_logged([sys.executable, str(HERE / variant.script[0]), *variant.script[1:], "--out", str(tmp)],
                       logs / f"script-{Path(variant.folder).name}.log")
            os.replace(tmp, variant.folder)
    for variant in config.variants:
        if variant.engine == "llama.cpp" and variant.convert and not gguf_path(variant).is_file():
            convert_to_gguf(venv, variant.convert, gguf_path(variant), logs, variant.pre)
    for variant in config.variants:
        if variant.engine == "llama.cpp" and variant.quantize and not gguf_path(variant).is_file():
            source, kind = variant.quantize
            out = gguf_path(variant)
            tmp = out.with_name(f".{out.name}.tmp")
            run_logged([str(venv_python(venv)), str(HERE / "llama_worker.py"), "quantize", source, str(tmp), kind],
                       logs / f"quantize-{out.stem}.log")
            os.replace(tmp, out)
    for variant in config.variants:
        if variant.engine == "llama.cpp" and not gguf_path(variant).is_file():
            raise SystemExit(f"peer.py: {variant.name}: {gguf_path(variant)} is missing and nothing in the config "
                             "makes it (give convert or quantize)")
        if variant.engine == "ours" and variant.make and not Path(variant.folder).exists():
            run_logged(cli(*variant.make, "--out", variant.folder), logs / f"make-{Path(variant.folder).name}.log",
                       our_env(threads=os.cpu_count()))
        if variant.engine == "ours":
            resolve_folder(variant.folder)  # refuses a missing folder in one line
    return write_inputs(config, work)


def inputs_path(config: Config, work: Path) -> Path:
    return work / f"inputs-{config.path.stem}.json"


def write_inputs(config: Config, work: Path, prompt: int = 64, prefill: int = 512) -> Path:
    """The prompts as text (for `generate --prompt`) and as the ids that text tokenises to (generate's own
    call: tokenizer(text).input_ids), and `eval`'s windows, from the library's functions."""
    from transformers import AutoTokenizer

    from sparse_expansion.data import corpus_tokens, evaluation_windows

    tokenizer = AutoTokenizer.from_pretrained(resolve_folder(config.tokenizer))
    tokens = corpus_tokens(EVAL["data"], tokenizer)
    prompts = {}
    for key, length in (("decode", prompt), ("prefill", prefill)):
        text = tokenizer.decode(tokens[:length].tolist())
        prompts[key] = {"text": text, "ids": tokenizer(text).input_ids}
    windows = evaluation_windows(tokens, EVAL["seqlen"], EVAL["windows"], name=EVAL["data"])
    out = inputs_path(config, work)
    out.write_text(json.dumps({**prompts, "windows": windows.tolist(), "eval": EVAL, "tokenizer": config.tokenizer}))
    return out


# --- run ---------------------------------------------------------------------------------------------

def child(argv: list[str], env: dict, timeout: float = 3600) -> dict:
    """Run one measurement process; its last stdout line is JSON. Adds the child's peak RSS (its VmHWM,
    polled: resources.peak_rss_mb says why not wait4's ru_maxrss)."""
    from sparse_expansion.resources import peak_rss_mb

    peak = 0.0

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, peak_rss_mb(process.pid))
            if time.monotonic() > deadline:
                process.kill()
                pid, status, _ = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv[:8]))} failed ({process.returncode}):\n{err.read()[-2000:]}")
        result = json.loads(out.read().strip().splitlines()[-1])
    result["child_peak_rss_mb"] = peak
    return result


def measure_speed(variant: Variant, threads: int, inputs: Path, venv: Path, key: str, new: int) -> dict:
    if variant.engine == "ours":
        text = json.loads(inputs.read_text())[key]["text"]
        return child(cli("generate", variant.folder, "--prompt", text, "--max-new-tokens", str(new), "--ignore-eos",
                         "--json", "--dtype", variant.dtype, "--weights", variant.weights, "--device", "cpu"),
                     our_env(threads))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return child([str(venv_python(venv)), str(HERE / "llama_worker.py"), "speed", "--gguf", str(gguf_path(variant)),
                  "--ids", str(inputs), "--key", key, "--new", str(new), "--threads", str(threads)], env)


def eval_dtype(variant: Variant) -> str:
    """`eval` has no --dtype auto (it stays float32 unless told): score the precision `generate` chose."""
    if variant.dtype != "auto":
        return variant.dtype
    from sparse_expansion.models import resolve_model_path
    from sparse_expansion.storage import fast_dtype

    return fast_dtype(resolve_model_path(variant.folder), "cpu")[0]


def eval_weights(variant: Variant) -> str:
    """`eval` has no --weights fast (generate's default): score the storage `generate` chose."""
    if variant.weights != "fast":
        return variant.weights
    from sparse_expansion.models import resolve_model_path
    from sparse_expansion.storage import fast_weights

    return fast_weights(resolve_model_path(variant.folder), "cpu")[0]


def measure_perplexity(variant: Variant, threads: int, inputs: Path, venv: Path) -> dict:
    if variant.engine == "ours":
        return child(cli("eval", variant.folder, "--data", EVAL["data"], "--windows", str(EVAL["windows"]),
                         "--seqlen", str(EVAL["seqlen"]), "--json", "--dtype", eval_dtype(variant), "--weights",
                         eval_weights(variant), "--device", "cpu"), our_env(threads))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return child([str(venv_python(venv)), str(HERE / "llama_worker.py"), "perplexity", "--gguf",
                  str(gguf_path(variant)), "--ids", str(inputs), "--threads", str(threads)], env)


def interleaved(variants: list[Variant]) -> list[Variant]:
    """llama.cpp and ours alternating (A B A B ...), each engine in config order."""
    lists = [[v for v in variants if v.engine == e] for e in ("llama.cpp", "ours")]
    out = []
    for i in range(max(len(x) for x in lists)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def portable(text: str, venv: Path) -> str:
    """A command line without this machine's paths: the venv as VENV, the checkout as relative paths."""
    return text.replace(str(venv), "VENV").replace(str(ROOT) + os.sep, "").replace(str(Path.home()), "~")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    """HEAD, with "+changes" when tracked files differ from it (the code that ran is then not HEAD's)."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def run(config: Config, venv: Path, work: Path, out: Path, threads: list[int], rounds: int, new: int,
        perplexity: bool, note: str, argv: list[str]) -> Path:
    inputs = inputs_path(config, work)
    if not inputs.is_file():
        raise SystemExit(f"peer.py: {inputs} is missing; run `peer.py prepare` first")
    venv_python(venv)  # refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    info = child([str(venv_python(venv)), str(HERE / "llama_worker.py"), "info"], dict(os.environ))
    inp = json.loads(inputs.read_text())

    def write(row: dict) -> None:  # no path of this machine in a committed file
        row = {k: portable(v, venv) if isinstance(v, str) else v for k, v in row.items()}
        with results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    write({"kind": "meta", "config": config.path.name, "base": config.base,
           "variants": [v.name for v in config.variants], "commit": commit(), "machine": benchmarking.machine(),
           "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "rounds": rounds,
           "threads": threads, "new_tokens": new, "prompt_tokens": len(inp["decode"]["ids"]),
           "prefill_tokens": len(inp["prefill"]["ids"]), "eval": inp["eval"], "note": note,
           "command": portable("python benchmarks/peer_llamacpp/peer.py " + " ".join(argv), venv),
           "load_before": load_average(),
           **info})
    variants = interleaved(config.variants)
    if perplexity:
        for variant in variants:
            if variant.perplexity:
                row = measure_perplexity(variant, max(threads), inputs, venv)
                write({"kind": "perplexity", "variant": variant.name, "engine": variant.engine, "threads": max(threads),
                       "config": config.path.name, "load_average": load_average(), **row})
                print(f"{variant.name}: perplexity {row['perplexity']:.3f}", file=sys.stderr, flush=True)
    pairs = [(variant, t) for t in threads for variant in variants]
    for r in range(rounds):
        shift = r % len(pairs)
        for variant, t in pairs[shift:] + pairs[:shift]:
            decode = measure_speed(variant, t, inputs, venv, "decode", new)
            prefill = measure_speed(variant, t, inputs, venv, "prefill", 1)
            row = {"kind": "speed", "variant": variant.name, "engine": variant.engine, "threads": t, "round": r,
                   "config": config.path.name, "load_average": load_average(), "time": time.time(),
                   **{k: decode.get(k) for k in ("prompt_tokens", "new_tokens", "decode_tokens_per_second",
                                                 "decode_tokens_per_cpu_second", "loaded_rss_mb", "load_seconds",
                                                 "text_head", "weights", "kernels")},
                   "prefill_tokens": prefill.get("prompt_tokens"), "prefill_seconds": prefill["prefill_seconds"],
                   "prefill_cpu_seconds": prefill["prefill_cpu_seconds"],
                   "peak_rss_mb": max(decode["child_peak_rss_mb"], prefill["child_peak_rss_mb"])}
            if variant.engine == "ours":  # generate --json gives the text; the first characters say enough
                row["text_head"] = decode.get("text", "")[:40]
            write(row)
            print(f"round {r} {variant.name} {t}t: {row['decode_tokens_per_second']:.1f} tok/s "
                  f"({row['decode_tokens_per_cpu_second']:.1f} per CPU s), prefill {row['prefill_seconds']:.2f} s, "
                  f"load {row['load_average']}", file=sys.stderr, flush=True)
    return results


# --- report ------------------------------------------------------------------------------------------

def read_rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def medians(rows: list[dict]) -> list[dict]:
    """One summary per (config, variant, threads) in first-seen order: medians of the speed rows, the
    perplexity row of the variant (any thread count: it does not depend on them)."""
    ppl = {(r["config"], r["variant"]): r for r in rows if r["kind"] == "perplexity"}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["kind"] == "speed":
            groups.setdefault((row["config"], row["variant"], row["threads"]), []).append(row)

    def med(items: list[dict], key: str) -> float | None:
        values = [r[key] for r in items if r.get(key) is not None]
        return statistics.median(values) if values else None

    out = []
    for (config, variant, threads), items in groups.items():
        summary = {"config": config, "variant": variant, "engine": items[0]["engine"], "threads": threads,
                   "runs": len(items), **{k: med(items, k) for k in (
                       "decode_tokens_per_second", "decode_tokens_per_cpu_second", "prefill_seconds",
                       "prefill_cpu_seconds", "loaded_rss_mb", "peak_rss_mb")}}
        quality = ppl.get((config, variant))
        summary["perplexity"] = quality["perplexity"] if quality else None
        out.append(summary)
    return out


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(summaries: list[dict], threads: int, bases: dict[str, str]) -> list[str]:
    rows = [s for s in summaries if s["threads"] == threads]
    if not rows:
        return []
    ref = {s["config"]: s for s in rows if s["variant"] == bases.get(s["config"])}
    lines = [f"**{threads} thread{'s' if threads > 1 else ''}**", "",
             "| variant | engine | decode tok/s | vs base | decode tok/CPU-s | vs base (CPU) | prefill s "
             "| prefill CPU s | loaded RSS MB | peak RSS MB | perplexity | runs |", "|---" * 12 + "|"]

    def versus(s: dict, key: str) -> str:
        base = ref.get(s["config"], {}).get(key)
        return f"{s[key] / base:.2f}x" if base and s[key] else "-"

    for s in rows:
        cpu_ratio = versus(s, "decode_tokens_per_cpu_second") if threads == 1 else "-"
        cells = [s["variant"], s["engine"], fmt(s["decode_tokens_per_second"]), versus(s, "decode_tokens_per_second"),
                 fmt(s["decode_tokens_per_cpu_second"]), cpu_ratio,
                 fmt(s["prefill_seconds"], 2), fmt(s["prefill_cpu_seconds"], 2), fmt(s["loaded_rss_mb"], 0),
                 fmt(s["peak_rss_mb"], 0), fmt(s["perplexity"], 2), str(s["runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def report(out: Path) -> Path:
    rows = read_rows(out / "results.jsonl")
    metas = [r for r in rows if r["kind"] == "meta"]
    order: dict[tuple[str, str], int] = {}
    for m in metas:  # the config's order, as the first invocation listed it
        for i, name in enumerate(m["variants"]):
            order.setdefault((m["config"], name), i)
    summaries = sorted(medians(rows), key=lambda s: (order.get((s["config"], s["variant"]), 1e9), s["threads"]))
    bases = {m["config"]: m["base"] for m in metas}
    lines = [f"# llama.cpp side by side: {out.name}", ""]
    notes = [m["note"] for m in metas if m.get("note")]
    if notes:  # the latest invocation's note (each command below carries its own)
        lines += ["> " + notes[-1], ""]
    lines += ["Made by `python benchmarks/peer_llamacpp/peer.py report " + out.name + "` from `results.jsonl` "
              "(medians over rounds; every figure below is in that file).", "", "## What was run", ""]
    for m in metas:
        lines += [f"- `{m['config']}`, commit {m['commit']}, started {m['started']}, {m['rounds']} round(s), "
                  f"threads {m['threads']}, decode {m['new_tokens']} new tokens after a {m['prompt_tokens']}-token "
                  f"prompt, prefill {m['prefill_tokens']} tokens, perplexity on {m['eval']['data']} "
                  f"{m['eval']['windows']} x {m['eval']['seqlen']}; load average before {m['load_before']}.",
                  f"  Machine: {m['machine']}. llama-cpp-python {m['llama_cpp_python']}: `{m['system_info']}`.",
                  f"  Command: `{m['command']}`"]
    loads = [float(r["load_average"][0]) for r in rows if r["kind"] == "speed"]
    if loads:
        lines += [f"- 1-minute load average during the speed rows: {min(loads):.2f}-{max(loads):.2f} "
                  f"(on {os.cpu_count()} CPUs here; above the thread count means other work shared the cores)."]
    lines += ["", "Decode: tokens/s over the new tokens after the first (wall clock), greedy, end-of-text ignored; "
              "tok/CPU-s is the same over the process's CPU time (all its threads: at 1 thread immune to other "
              "jobs, at 2 threads not a speed). Prefill: the prompt's forward pass and the first token. Loaded RSS: "
              "after loading (llama.cpp with use_mmap=False so its weights count). Peak RSS: the most of the "
              "decode and prefill processes. Perplexity: the same token windows for both engines; "
              "llama.cpp's from its logits. The llama.cpp F16 / Q8_0 / Q4_0 rows are llama.cpp conversions of "
              "our HF folder, i.e. of the de-quantized Q4_1 weights, not of the original bf16 checkpoint.", ""]
    for config in dict.fromkeys(m["config"] for m in metas):
        lines += [f"## {config}", "", f"Ratios are decode tokens/s over `{bases[config]}`'s at the same threads: "
                  "wall clock, and process CPU time at 1 thread (at 2 threads CPU time is no speed).", ""]
        for threads in sorted({s["threads"] for s in summaries if s["config"] == config}):
            lines += table([s for s in summaries if s["config"] == config], threads, bases)
    if plot(summaries, out / "pareto.png"):
        lines += ["## Pareto", "", "![perplexity against decode tok/s](pareto.png)", "",
                  "Perplexity (lower is better) against decode tokens/s (wall; right is better), one marker per "
                  "variant and thread count: filled 1 thread, hollow 2; circles llama.cpp, squares ours; grey lines "
                  "join the rows no other row at the same threads beats on both.", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def frontier(points: list[dict]) -> list[dict]:
    """The rows no other row beats on both decode speed and perplexity, fastest first."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (-p["decode_tokens_per_second"], p["perplexity"])):
        if p["perplexity"] < best:
            front.append(p)
            best = p["perplexity"]
    return front


def plot(summaries: list[dict], path: Path) -> bool:
    """The Pareto figure; False (no figure) when no row has both a speed and a perplexity."""
    points = [s for s in summaries if s["perplexity"] is not None and s["decode_tokens_per_second"]]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(s["variant"] for s in points))
    for s in points:
        color = colors[names.index(s["variant"]) % len(colors)]
        marker = "o" if s["engine"] == "llama.cpp" else "s"
        face = color if s["threads"] == 1 else "none"
        ax.scatter(s["decode_tokens_per_second"], s["perplexity"], marker=marker, s=60, facecolors=face,
                   edgecolors=color, label=s["variant"] if s["threads"] == min(p["threads"] for p in points) else None)
    for threads, style in zip(sorted({p["threads"] for p in points}), ("-", "--", ":", "-.")):
        front = frontier([p for p in points if p["threads"] == threads])
        ax.plot([p["decode_tokens_per_second"] for p in front], [p["perplexity"] for p in front], style,
                color="0.6", linewidth=1, zorder=0, label=f"Pareto front, {threads} thread{'s' * (threads > 1)}")
    ax.set_yscale("log")
    ax.set_xlabel("decode tokens/s (wall, median)")
    ax.set_ylabel("perplexity, shakespeare:test 16 x 512 (log)")
    ax.set_title("llama.cpp and sparse_expansion: filled 1 thread, hollow 2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return True


# --- entry -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if str(ROOT / "src") not in sys.path:  # this checkout's sparse_expansion, as the children get it
        sys.path.insert(0, str(ROOT / "src"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    commands = {}
    for step in ("prepare", "run", "all", "check"):
        p = sub.add_parser(step)
        commands[step] = p
        p.add_argument("--config", type=Path, nargs="+", default=[HERE / "configs" / "smollm2.toml"])
        p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                       help="made folders, GGUFs, inputs (default runs/peer_llamacpp)")
        if step == "check":
            continue
        p.add_argument("--venv", type=Path, required=True, help="the venv setup.sh built")
        p.add_argument("--only", nargs="+", help="variant names (default: all in the configs)")
        if step == "prepare":
            continue
        p.add_argument("--out", type=Path, help="results folder (default benchmarks/peer_llamacpp/results/DATE-LABEL)")
        p.add_argument("--label", default=f"{os.cpu_count()}cpu", help="machine label of the default --out")
        p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
        p.add_argument("--rounds", type=int, default=5)
        p.add_argument("--new-tokens", type=int, default=128)
        p.add_argument("--no-perplexity", action="store_true")
        p.add_argument("--note", default="", help="a line for the report (e.g. that the machine was shared)")
    r = sub.add_parser("report")
    r.add_argument("out", type=Path, help="a results folder holding results.jsonl")
    args = parser.parse_args(argv)
    if args.step == "report":
        if not (args.out / "results.jsonl").is_file():
            parser.error(f"{args.out}/results.jsonl is missing; give a folder written by `peer.py run`")
        print(report(args.out))
        return
    try:
        configs = [load_config(path, args.work.resolve()) for path in args.config]
    except ConfigError as exc:
        parser.error(str(exc))
    if args.step == "check":
        for config in configs:
            print(f"{config.path.name}: {len(config.variants)} variants: " + ", ".join(v.name for v in config.variants))
        return
    venv = args.venv.resolve()
    if getattr(args, "only", None):
        for config in configs:
            config.variants = [v for v in config.variants if v.name in args.only]
        configs = [c for c in configs if c.variants]
        if not configs:
            parser.error(f"--only {args.only} names no variant of the configs; see `peer.py check`")
    if args.step in ("prepare", "all"):
        for config in configs:
            print(f"inputs: {prepare(config, venv, args.work.resolve())}", file=sys.stderr)
    if args.step == "prepare":
        return
    out = args.out or HERE / "results" / f"{datetime.date.today():%Y-%m-%d}-{args.label}"
    for config in configs:
        run(config, venv, args.work.resolve(), out, args.threads, args.rounds, args.new_tokens,
            not args.no_perplexity, args.note, argv)
    print(report(out))


if __name__ == "__main__":
    main()

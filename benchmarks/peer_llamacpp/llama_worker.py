"""The llama.cpp side of the peer study: one measurement per process, run by the PEER venv's python.

It imports llama_cpp and numpy only (never sparse_expansion or torch): peer.py hands it token ids
made by our tokenizer (the GGUF holds the same vocabulary), so both engines read the same tokens.

    VENV/bin/python llama_worker.py speed --gguf F --ids inputs.json --key decode --new 128 --threads 1
    VENV/bin/python llama_worker.py perplexity --gguf F --ids inputs.json --threads 2
    VENV/bin/python llama_worker.py quantize SRC.gguf DST.gguf Q8_0

speed mirrors `sparse-expansion generate --json --ignore-eos` step for step: the prompt's forward pass
and the first (greedy) token are "prefill"; every later token, one `eval` of one token on the KV cache
and an argmax, is "decode" (tokens/s over the new tokens after the first), in wall and process CPU
seconds. Logits are kept for the last position only (logits_all=False), as Hugging Face `generate`
computes the LM head for the last prompt token only. Weights are read into memory at load
(use_mmap=False), so the loaded RSS counts them as ours does. perplexity evaluates each window from
an empty cache with logits for every position (logits_all=True) and averages the next-token NLL in
float64, as `sparse-expansion eval` does.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import resource
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Resident memory now (MB = 2**20 bytes), as sparse_expansion.resources reads it."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_model(gguf: str, threads: int, n_ctx: int, logits_all: bool):
    import llama_cpp

    return llama_cpp.Llama(model_path=gguf, n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_ubatch=min(n_ctx, 512),
                           n_threads=threads, n_threads_batch=threads, logits_all=logits_all, use_mmap=False,
                           verbose=False, seed=0)


def last_logits(llm) -> np.ndarray:
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),))


def speed(gguf: str, ids: list[int], new: int, threads: int) -> dict:
    import llama_cpp

    start = time.perf_counter()
    llm = open_model(gguf, threads, n_ctx=len(ids) + new + 8, logits_all=False)
    load_seconds = time.perf_counter() - start
    loaded = rss_mb()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    llm.eval(ids)
    out = [int(np.argmax(last_logits(llm)))]
    wall1, cpu1 = time.perf_counter(), time.process_time()
    for _ in range(new - 1):
        llm.eval([out[-1]])
        out.append(int(np.argmax(last_logits(llm))))
    wall2, cpu2 = time.perf_counter(), time.process_time()
    decoded = new - 1
    return {"engine": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "threads": threads,
            "load_seconds": load_seconds, "loaded_rss_mb": loaded, "prompt_tokens": len(ids), "new_tokens": len(out),
            "prefill_seconds": wall1 - wall0, "prefill_cpu_seconds": cpu1 - cpu0,
            "decode_seconds": wall2 - wall1, "decode_cpu_seconds": cpu2 - cpu1,
            "decode_tokens_per_second": decoded / (wall2 - wall1) if decoded else None,
            "decode_tokens_per_cpu_second": decoded / (cpu2 - cpu1) if decoded and cpu2 > cpu1 else None,
            "text_head": out[:8], "peak_rss_mb": peak_rss_mb()}


def perplexity(gguf: str, windows: list[list[int]], threads: int) -> dict:
    seqlen = len(windows[0])
    llm = open_model(gguf, threads, n_ctx=seqlen, logits_all=True)
    start = time.perf_counter()
    total, count = 0.0, 0
    for window in windows:
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: seqlen - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        targets = np.asarray(window[1:])
        total += float((log_z - logits[np.arange(seqlen - 1), targets]).sum())
        count += seqlen - 1
    nll = total / count
    return {"engine": "llama.cpp", "perplexity": math.exp(nll), "nll": nll, "tokens": count,
            "windows": len(windows), "seqlen": seqlen, "eval_seconds": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb()}


def quantize(src: str, dst: str, kind: str, threads: int) -> dict:
    """llama.cpp's own quantizer (llama_model_quantize, what its `llama-quantize` tool calls)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if code != 0:
        raise SystemExit(f"llama_model_quantize {src} -> {kind} failed with code {code}")
    return {"quantized": dst, "type": kind, "bytes": Path(dst).stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--gguf", required=True)
    s.add_argument("--ids", required=True, type=Path, help="inputs.json written by peer.py")
    s.add_argument("--key", required=True, help="which prompt of inputs.json: decode or prefill")
    s.add_argument("--new", type=int, required=True)
    s.add_argument("--threads", type=int, required=True)
    p = sub.add_parser("perplexity")
    p.add_argument("--gguf", required=True)
    p.add_argument("--ids", required=True, type=Path)
    p.add_argument("--threads", type=int, required=True)
    q = sub.add_parser("quantize")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("type", help="a llama_ftype suffix: Q8_0, Q4_0, Q4_1, F16 ...")
    q.add_argument("--threads", type=int, default=2)
    sub.add_parser("info")
    args = parser.parse_args()
    if args.task == "speed":
        result = speed(args.gguf, json.loads(args.ids.read_text())[args.key]["ids"], args.new, args.threads)
    elif args.task == "perplexity":
        result = perplexity(args.gguf, json.loads(args.ids.read_text())["windows"], args.threads)
    elif args.task == "quantize":
        result = quantize(args.src, args.dst, args.type, args.threads)
    else:
        import llama_cpp

        result = {"llama_cpp_python": llama_cpp.__version__,
                  "system_info": llama_cpp.llama_print_system_info().decode().strip()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

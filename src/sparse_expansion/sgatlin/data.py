"""Training data for the sgatlin study: Shakespeare + KJV, split by document, BPE-tokenised.

Validation = the held-out plays (`corpora.HELD_OUT_PLAYS`) plus a fixed list of Bible books;
everything else trains. The tokenizer is fit on the training split only and saved with each run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..corpora import HELD_OUT_PLAYS, kjv_books, shakespeare_split
from ..errors import UsageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

VAL_BOOKS: tuple[str, ...] = ("Ruth", "Jonah", "Mark", "Philemon", "Jude")
EOS = "<|endoftext|>"
VOCAB_SIZE = 8192


def split_documents() -> tuple[dict[str, str], dict[str, str]]:
    """(train, validation) as {name: text}; names are 'play:<name>' and 'kjv:<book>'."""
    train = {f"play:{n}": t for n, t in shakespeare_split("train").items()}
    val = {f"play:{n}": t for n, t in shakespeare_split("test").items()}
    assert set(HELD_OUT_PLAYS) == {n.split(":", 1)[1] for n in val}
    for book, text in kjv_books().items():
        (val if book in VAL_BOOKS else train)[f"kjv:{book}"] = text
    return train, val


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Byte-level BPE fit on `texts` (deterministic for a given input order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"tokenizer {path} not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
        raise UsageError(f"tokenizer {path} cannot be read ({str(exc)[:200]}); the file is "
                         "corrupt") from None


def encode_documents(tok, docs: dict[str, str]) -> np.ndarray:
    """One int32 stream: documents in a fixed (sorted-name) order, each followed by EOS."""
    eos = tok.token_to_id(EOS)
    names = sorted(docs)
    out: list[int] = []
    for enc in tok.encode_batch([docs[n] for n in names]):
        out.extend(enc.ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


@dataclass
class TokenData:
    """Token streams for training and validation, plus the tokenizer that made them."""

    tokenizer: object
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def prepare_data(tokenizer_path: str | Path | None = None) -> TokenData:
    """Split, fit (or load) the tokenizer, encode both splits."""
    train_docs, val_docs = split_documents()
    if tokenizer_path is None:
        tok = train_tokenizer([train_docs[n] for n in sorted(train_docs)])
    else:
        tok = load_tokenizer(tokenizer_path)
    return TokenData(tok, encode_documents(tok, train_docs), encode_documents(tok, val_docs))


def batch_at_step(stream: np.ndarray, step: int, batch: int, seq_len: int, seed: int
                  ) -> torch.Tensor:
    """The global batch of step `step`: `batch` random windows of seq_len + 1 tokens.

    A pure function of (seed, step), so resuming or sharding over ranks sees the same data.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch,), generator=gen).numpy()
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def val_windows(stream: np.ndarray, n_windows: int, seq_len: int) -> torch.Tensor:
    """A fixed validation set: n evenly spaced windows of seq_len + 1 tokens."""
    n_windows = min(n_windows, (len(stream) - 1) // (seq_len + 1))
    starts = np.linspace(0, len(stream) - seq_len - 1, n_windows).astype(np.int64)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(stream[idx].astype(np.int64))


def save_token_data(data: TokenData, folder: str | Path) -> None:
    """tokenizer.json + train.npy + val.npy, so many runs share one tokenisation."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data.tokenizer.save(str(folder / "tokenizer.json"))
    np.save(folder / "train.npy", data.train)
    np.save(folder / "val.npy", data.val)


def check_token_data(folder: str | Path) -> Path:
    """Refuse a --data-dir without the files `save_token_data` writes (cheap: no file is read)."""
    folder = Path(folder)
    for name in ("tokenizer.json", "train.npy", "val.npy"):
        if not (folder / name).is_file():
            raise UsageError(f"--data-dir {folder} has no {name}; make one with "
                             "`sparse-expansion train --save-data DIR` or let isoflop write it")
    return folder


def load_token_data(folder: str | Path) -> TokenData:
    folder = check_token_data(folder)
    try:
        return TokenData(load_tokenizer(folder / "tokenizer.json"),
                         np.load(folder / "train.npy"), np.load(folder / "val.npy"))
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"--data-dir {folder} is corrupt ({str(exc).splitlines()[0][:200]}); "
                         "write it again with --save-data") from None

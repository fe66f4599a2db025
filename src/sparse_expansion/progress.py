"""Progress bars: the moving bar on a terminal, one plain line every few seconds in a log.

tqdm redraws its bar with `\\r` frames, which a terminal overwrites but a log file (`make run > log`,
a CI job, a batch system) keeps: dozens of frames a loop on one endless line. Every loop in the
package gets its bar here, so this is the one place that decides.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

LOG_SECONDS = 5.0  # at most one line this often when stderr is not a terminal


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """`tqdm(iterable, **kwargs)` on a terminal; elsewhere the same counter printed as whole lines,
    at the start, at most every LOG_SECONDS, and at the end."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=stream, **kwargs)
    kwargs.update(mininterval=max(kwargs.get("mininterval", 0), LOG_SECONDS), dynamic_ncols=False)
    return _log_bar()(iterable, file=_Lines(stream), **kwargs)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stand-in stream
        return False


_LOG_BAR = None


def _log_bar() -> type:
    """tqdm writing each refresh as its own line (built on first use: tqdm imports slowly)."""
    global _LOG_BAR
    if _LOG_BAR is None:
        from tqdm.std import tqdm

        class LogBar(tqdm):
            def display(self, msg: str | None = None, pos: int | None = None) -> bool:
                if msg == "":  # tqdm clearing its bar: nothing to clear in a log
                    return True
                if msg is None and self.n == getattr(self, "_last_n", None):
                    return True  # no step since the last line (the closing redraw, tqdm's idle monitor)
                self._last_n = self.n
                self.fp.write((self.__str__() if msg is None else msg).rstrip() + "\n")
                return True

            # A new postfix or description shows on the next timed line, not as a line of its own.
            def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
                super().set_postfix_str(s, refresh=False)

            def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
                super().set_postfix(ordered_dict, refresh=False, **kwargs)

            def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
                super().set_description(desc, refresh=False)

        _LOG_BAR = LogBar
    return _LOG_BAR


class _Lines:
    """The stream under a log bar: drops tqdm's carriage returns and cursor moves, keeps lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        if text.replace("\x1b[A", "").strip():
            self.stream.write(text)
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

"""progress.py: a log gets whole lines, few of them; a terminal gets tqdm's bar."""

import io

from sparse_expansion.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_few_whole_lines_not_frames():
    log = io.StringIO()
    bar = progress_bar(range(2000), desc="layers", unit="layer", file=log)
    for i in bar:
        bar.set_postfix_str(f"layer {i}")  # a postfix alone must not print a line
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert len(lines) == 2, lines  # the start and the end, once (a line per 5 s: none in this quick loop)
    assert lines[0].startswith("layers:   0%") and lines[-1].startswith("layers: 100%")
    assert lines[-1].rstrip().endswith("layer 1999]")


def test_a_terminal_gets_the_redrawn_bar_and_disable_prints_nothing():
    screen = Terminal()
    for _ in progress_bar(range(3), desc="eval", file=screen, mininterval=0):
        pass
    assert "\r" in screen.getvalue()
    quiet = io.StringIO()
    for _ in progress_bar(range(3), file=quiet, disable=True):
        pass
    assert quiet.getvalue() == ""


def test_every_bar_goes_through_the_helper():
    """One place decides how progress looks: no module but progress.py builds a tqdm bar itself."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "sparse_expansion"
    direct = [str(p.relative_to(src)) for p in src.rglob("*.py")
              if p.name != "progress.py" and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)]
    assert not direct, f"use sparse_expansion.progress.progress_bar in {direct}"

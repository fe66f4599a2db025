"""Rewrite BENCHMARKS.md's sections from the studies' reports: the one command that regenerates it.

    python benchmarks/report.py            # rewrite every section that has a study report
    python benchmarks/report.py --check    # exit 1, naming them, if any section is out of date

Each study folder `benchmarks/<study>/` holds its recipe, its configs and `results/<date>-<machine>/`
(the raw jsonl/json, PNGs, per-run reports) and one `report.md`: what BENCHMARKS.md shows between
`<!-- section:<study> -->` and `<!-- /section:<study> -->`. A line `<!-- include: PATH -->` in a
report is replaced by that file (PATH relative to the study folder, e.g. a table a run wrote into
its results folder). Paths inside a report are written from the repository root, where
BENCHMARKS.md is read. Sections with no study report (written by hand) are left as they are; a
study report with no section yet is appended as a new section.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = re.compile(r"(<!-- section:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /section:(?P=name) -->)", re.S)
INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->$", re.M)


def study_reports(benchmarks: Path = HERE) -> dict[str, Path]:
    """{study name: its report.md}, for every study folder that has one."""
    return {path.parent.name: path for path in sorted(benchmarks.glob("*/report.md"))}


def render(report: Path) -> str:
    """A study report with its includes expanded, ending in exactly one newline."""
    def include(match: re.Match) -> str:
        path = report.parent / match["path"]
        if not path.is_file():
            raise SystemExit(f"{report}: includes {match['path']}, which does not exist")
        return path.read_text().strip("\n")

    return INCLUDE.sub(include, report.read_text()).strip("\n") + "\n"


def rebuild(text: str, reports: dict[str, Path]) -> tuple[str, list[str]]:
    """(BENCHMARKS.md with every reported section rewritten, the names of the sections that changed)."""
    changed: list[str] = []
    seen: set[str] = set()

    def section(match: re.Match) -> str:
        name = match["name"]
        seen.add(name)
        if name not in reports:
            return match[0]
        body = render(reports[name])
        if body != match["body"]:
            changed.append(name)
        return match[1] + body + match[4]

    text = SECTION.sub(section, text)
    for name in sorted(set(reports) - seen):
        text = text.rstrip("\n") + f"\n\n<!-- section:{name} -->\n{render(reports[name])}<!-- /section:{name} -->\n"
        changed.append(name)
    return text, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether BENCHMARKS.md is up to date")
    parser.add_argument("--file", type=Path, default=ROOT / "BENCHMARKS.md", help="the file to rewrite")
    args = parser.parse_args(argv)
    text, changed = rebuild(args.file.read_text(), study_reports())
    if args.check:
        if changed:
            print(f"{args.file}: out of date in {', '.join(changed)}; run python benchmarks/report.py",
                  file=sys.stderr)
            return 1
        return 0
    args.file.write_text(text)
    print(f"{args.file}: rewrote {', '.join(changed) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

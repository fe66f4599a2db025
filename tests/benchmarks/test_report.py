"""benchmarks/report.py: BENCHMARKS.md's sections are the studies' report.md files, rewritten by one
command; and the recipes carry no path of one machine."""

import re
from pathlib import Path

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def load_report():
    return load_benchmark("benchmarks/report.py", "benchmarks_report")


def test_sections_are_rewritten_from_study_reports_and_nothing_else(tmp_path):
    report = load_report()
    (tmp_path / "alpha" / "results" / "2026-01-01-cpu2").mkdir(parents=True)
    (tmp_path / "alpha" / "results" / "2026-01-01-cpu2" / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    (tmp_path / "alpha" / "report.md").write_text("## Alpha\n\n<!-- include: results/2026-01-01-cpu2/table.md -->\n")
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "report.md").write_text("## Beta\n")
    text = ("# Benchmarks\n\n<!-- section:alpha -->\nold alpha\n<!-- /section:alpha -->\n\n"
            "<!-- section:by_hand -->\nkept as written\n<!-- /section:by_hand -->\n")
    new, changed = report.rebuild(text, report.study_reports(tmp_path))
    assert changed == ["alpha", "beta"]
    assert "<!-- section:alpha -->\n## Alpha\n\n| a |\n|---|\n| 1 |\n<!-- /section:alpha -->" in new
    assert "<!-- section:by_hand -->\nkept as written\n<!-- /section:by_hand -->" in new
    assert new.rstrip().endswith("<!-- section:beta -->\n## Beta\n<!-- /section:beta -->")
    assert report.rebuild(new, report.study_reports(tmp_path)) == (new, [])  # a second run changes nothing


def test_benchmarks_md_is_what_the_study_reports_say():
    report = load_report()
    _, changed = report.rebuild((ROOT / "BENCHMARKS.md").read_text(), report.study_reports())
    assert changed == [], f"run python benchmarks/report.py (out of date: {changed})"


def test_recipes_name_no_path_of_one_machine():
    recipes = [p for p in (ROOT / "benchmarks").rglob("*") if p.suffix in (".py", ".sh", ".queue")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in recipes for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"(?<![\w.])/(work|home|root|Users)/", line)]
    assert not found, found

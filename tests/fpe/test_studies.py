import math
import re
from dataclasses import asdict

import pytest

from sparse_expansion.errors import UsageError
from sparse_expansion.fpe.report import dnf_table, point_comparison
from sparse_expansion.fpe.run import run_study
from sparse_expansion.fpe.studies import (
    MIN_NEGATIVE_FRACTION,
    POINT_RULES,
    DNFConfig,
    FPEStudyConfig,
    dnf_study,
    gain_vs_load,
    max_clauses,
)


def _run(rule, clauses, neurons, seed, acc, cap, cos):
    return {
        "rule": rule,
        "clauses": clauses,
        "hidden_parent": neurons,
        "seed": seed,
        "test_accuracy": acc,
        "after": {"feature_capacity": cap, "mean_abs_cosine": cos},
    }


def test_gain_fit_recovers_a_known_linear_law():
    runs = []
    for i, (m, h) in enumerate([(4, 8), (8, 8), (16, 8), (8, 4), (8, 16), (32, 8)]):
        for seed in range(2):
            cap_fold, cos_fold = 1.5 + 0.3 * i + 0.1 * seed, 0.9 - 0.1 * i + 0.05 * seed
            gain = 0.01 + 0.2 * math.log2(cap_fold) - 0.05 * math.log2(cos_fold)
            runs.append(_run("dense", m, h, seed, 0.8, 2.0, 0.5))
            runs.append(_run("random", m, h, seed, 0.8 * (1 + gain), 2.0 * cap_fold, 0.5 * cos_fold))
    fit = gain_vs_load(runs)
    assert len(fit["points"]) == 12
    f = fit["fit"]
    assert f["b0"] == pytest.approx(0.01, abs=1e-9)
    assert f["b1_log2_capacity_fold"] == pytest.approx(0.2, abs=1e-9)
    assert f["b2_log2_abs_cosine_fold"] == pytest.approx(-0.05, abs=1e-9)
    assert f["r2"] == pytest.approx(1.0)
    assert {p["load"] for p in fit["points"]} == {0.5, 1.0, 2.0, 4.0}


def test_named_studies_cover_the_issue_grid():
    base = DNFConfig()
    configs, rules, _ = dnf_study("clauses", base)
    assert [c.clauses for c in configs] == [4, 8, 16, 32] and {c.neurons for c in configs} == {8}
    configs, _, _ = dnf_study("neurons", base)
    assert [c.neurons for c in configs] == [4, 8, 16, 32] and {c.clauses for c in configs} == {8}
    configs, _, _ = dnf_study("alpha", base)
    assert [c.alpha for c in configs] == [2, 4]
    configs, rules, _ = dnf_study("point", base)
    assert (configs[0].clauses, configs[0].neurons, configs[0].alpha) == (8, 8, 2)
    assert {"random", "clause", "overlapping", "dense-wide"} <= set(rules)


def test_tables_show_mean_and_spread():
    runs = [
        dict(_run("dense", 8, 8, s, a, 3.0, 0.5), hidden=8, nonzeros=273, config={"alpha": 2})
        for s, a in enumerate([0.8, 0.9])
    ]
    table = dnf_table(runs, "clauses")
    assert "85.0 ± 5.0" in table and "| 8 | dense | 8 | 273 ± 0 |" in table
    assert "78.7" in point_comparison(runs)  # the paper's dense reference sits beside ours


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if k not in ("seconds", "wall_seconds")}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


TINY = FPEStudyConfig(task="dnf", rules=("random", "clause"), neurons=(4,), clauses=4, seeds=1, epochs=(2, 2))


def test_a_study_on_a_tiny_seed_gives_the_same_result_twice():
    a = run_study(TINY, progress=False)
    b = run_study(TINY, progress=False)
    assert _without_times(a.results) == _without_times(b.results)
    assert a.report.startswith("# FPE on Boolean DNF tasks — study `single`")
    runs = a.results["runs"]
    assert [r["rule"] for r in runs] == ["dense", "random", "clause"]
    assert {r["nonzeros"] for r in runs} == {4 * 32 + 4 + 4 + 1}  # the dense parent's, for every network
    assert [r["hidden"] for r in runs] == [4, 8, 8]
    assert a.results["settings"] == {**asdict(DNFConfig()), "neurons": 4, "clauses": 4,
                                     "warmup_epochs": 2, "post_epochs": 2}
    assert not a.models and not any("_model" in r for r in runs)  # nothing kept unless asked


def test_defaults_are_the_benchmarked_settings():
    # BENCHMARKS.md's numbers come from these: a change here changes every published number
    assert FPEStudyConfig(task="dnf").dnf_base() == DNFConfig()
    assert DNFConfig() == DNFConfig(32, 8, 3, 8, 2, 4000, 4000, 30, 60, 6e-3, 256)
    digits = FPEStudyConfig(task="digits").real_config()
    assert (digits.fpe_widths, digits.dense_widths, digits.depths, digits.deep_fpe_widths) == \
        ((4, 8, 16), (4, 8, 16, 32, 64), (1, 3), (8, 16))
    assert (digits.alpha, digits.warmup_epochs, digits.post_epochs, digits.lr) == (2, 20, 40, 3e-3)
    plays = FPEStudyConfig(task="plays", depth=1, neurons=(8,)).real_config()
    assert (plays.depths, plays.fpe_widths, plays.warmup_epochs, plays.post_epochs, plays.lr) == \
        ((1,), (8,), 10, 20, 1e-3)
    assert FPEStudyConfig(task="dnf", study="all").rules_to_run() == POINT_RULES
    assert FPEStudyConfig(task="bible").rules_to_run() == ("random",)


def test_command_line_reproduces_the_config():
    from sparse_expansion.cli import build_parser
    from sparse_expansion.commands.fpe import config_from_args

    for config in (TINY, FPEStudyConfig(task="digits", rules=("feature", "random"), alpha=3, neurons=(4, 8), depth=2,
                                     seeds=2, epochs=(0, 1), threads=2, save_models=True),
                   FPEStudyConfig(task="dnf", study="load", alpha=4)):
        argv = config.command_line("runs/x").split()[1:]
        assert config_from_args(build_parser().parse_args(argv)) == config


CHECKS = [
    (dict(task="mnist"), "unknown --task mnist"),
    (dict(task="dnf", alpha=1), "--alpha must be at least 2"),
    (dict(task="dnf", seeds=0), "--seeds must be at least 1"),
    (dict(task="dnf", threads=0), "--threads must be at least 1"),
    (dict(task="digits", depth=0), "--depth must be at least 1"),
    (dict(task="dnf", clauses=0), "--clauses must be at least 1"),
    (dict(task="dnf", clauses=42), "use at most 41"),
    (dict(task="dnf", neurons=(0,)), "--neurons needs positive"),
    (dict(task="dnf", neurons=(4, 8)), "one --neurons value"),
    (dict(task="dnf", epochs=(1, -1)), "--epochs takes WARMUP,POST"),
    (dict(task="dnf", study="nope"), "unknown --study nope"),
    (dict(task="dnf", study="point", alpha=4), "--study point sets --alpha itself"),
    (dict(task="dnf", study="all", clauses=16), "--study all sets --clauses itself"),
    (dict(task="dnf", study="neurons", neurons=(4,)), "--study neurons sets --neurons itself"),
    (dict(task="dnf", depth=2), "--depth applies to real-data tasks"),
    (dict(task="digits", study="point"), "--study applies to --task dnf only"),
    (dict(task="plays", clauses=8), "--clauses applies to --task dnf only"),
    (dict(task="digits", rules=("clause",)), "needs a task with clauses"),
    (dict(task="dnf", rules=("random", "magic")), "unknown --rule magic"),
    (dict(task="dnf", alpha=33), "--alpha 33 exceeds the 32 inputs"),
    (dict(task="digits", alpha=65, rules=("feature",)), "--alpha 65 exceeds the 64 inputs"),
]


@pytest.mark.parametrize("fields,message", CHECKS)
def test_check_refuses_without_data(fields, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        FPEStudyConfig(**fields).check()


def test_check_accepts_what_the_benchmarks_run():
    for fields in (dict(task="dnf", study="all"), dict(task="dnf", clauses=41), dict(task="dnf", alpha=32),
                   dict(task="digits", alpha=65, rules=("dense-wide",)),
                   *(dict(task=t, rules=("random", "feature")) for t in ("digits", "plays", "bible"))):
        FPEStudyConfig(**fields).check()


def test_max_clauses_leaves_enough_negatives():
    m = max_clauses(3)
    assert (7 / 8) ** m >= MIN_NEGATIVE_FRACTION > (7 / 8) ** (m + 1)
    assert m >= 32  # the clauses study's largest setting

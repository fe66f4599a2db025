import math

import pytest

from sparse_expansion.fpe.report import dnf_table, point_comparison
from sparse_expansion.fpe.studies import DNFConfig, dnf_study, gain_vs_load


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

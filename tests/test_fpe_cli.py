import json

import pytest

from sparse_expansion.cli import main
from sparse_expansion.fpe.real import dense_match


def test_dnf_single_writes_results(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(
        [
            "fpe",
            "--task",
            "dnf",
            "--rule",
            "random,clause,dense-wide",
            "--seeds",
            "2",
            "--epochs",
            "1,1",
            "--neurons",
            "4",
            "--clauses",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    runs = res["runs"]
    assert len(runs) == 2 * 4  # (dense + 3 rules) × 2 seeds
    for run in runs:
        assert {"rule", "seed", "test_accuracy", "nonzeros", "hidden", "alpha"} <= run.keys()
        assert 0.0 <= run["test_accuracy"] <= 1.0
    dense = {r["seed"]: r for r in runs if r["rule"] == "dense"}
    for run in runs:
        assert run["nonzeros"] == dense[run["seed"]]["nonzeros"]  # exact parity end to end
        assert run["hidden"] == (4 if run["rule"] == "dense" else 8)
    assert (out / "report.md").read_text().startswith("# FPE")
    assert (out / "dnf_single.png").stat().st_size > 1000
    assert res["command"].startswith("sparse-expansion fpe --task dnf")


def test_dnf_is_deterministic(tmp_path):
    args = [
        "fpe",
        "--task",
        "dnf",
        "--rule",
        "random",
        "--seeds",
        "1",
        "--epochs",
        "1,1",
        "--neurons",
        "4",
        "--clauses",
        "4",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "results.json").read_text())["runs"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["runs"]
    assert [r["test_accuracy"] for r in a] == [r["test_accuracy"] for r in b]
    assert [r["after"] for r in a] == [r["after"] for r in b]


def test_digits_saves_models(tmp_path):
    out = tmp_path / "d"
    code = main(
        [
            "fpe",
            "--task",
            "digits",
            "--neurons",
            "4",
            "--depth",
            "2",
            "--seeds",
            "1",
            "--epochs",
            "1,1",
            "--save-models",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    fpe = [r for r in res["runs"] if r["rule"] == "random"]
    assert {r["depth"] for r in fpe} == {1, 2}
    for r in fpe:
        assert (out / r["model_dir"] / "model.safetensors").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--task", "dnf", "--alpha", "1"],
        ["--task", "dnf", "--rule", "magic"],
        ["--task", "digits", "--rule", "clause"],
        ["--task", "digits", "--study", "point"],
        ["--task", "dnf", "--epochs", "3"],
        ["--task", "dnf", "--neurons", "x"],
        ["--task", "dnf", "--neurons", "4,8"],
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv):
    assert main(["fpe", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    assert not (tmp_path / "o").exists()


def test_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("old")
    assert main(["fpe", "--task", "dnf", "--out", str(tmp_path / "o")]) == 2


def test_dense_match_interpolates():
    runs = [
        {"rule": "dense", "depth": 1, "nonzeros": n, "test_accuracy": a}
        for n, a in [(100, 0.5), (400, 0.7), (1600, 0.9)]
    ]
    assert dense_match(runs, 1, 0.6) == pytest.approx(200.0)  # halfway in log space
    assert dense_match(runs, 1, 0.4) == 100.0
    assert dense_match(runs, 1, 0.95) is None

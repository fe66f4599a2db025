import json

import pytest

from sparse_expansion.artifact import read_record
from sparse_expansion.cli import main
from sparse_expansion.fpe.embeddings import load_task, train_test_split
from sparse_expansion.fpe.mlp import MaskedMLP, accuracy, count_nonzeros
from sparse_expansion.fpe.real import dense_match
from sparse_expansion.models import load_model


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
    printed = capsys.readouterr().out
    assert printed.startswith("# FPE on Boolean DNF tasks — study `single`") and str(out) in printed
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
    assert res["command"] == f"sparse-expansion fpe --task dnf --rule random,clause,dense-wide --neurons 4 " \
        f"--clauses 4 --seeds 2 --epochs 1,1 --out {out}"
    assert not (out / "models").exists() and not any("model_dir" in r for r in runs)


def test_digits_saves_models_that_load_and_score_as_recorded(tmp_path):
    out = tmp_path / "d"
    code = main(["fpe", "--task", "digits", "--neurons", "4", "--depth", "2", "--seeds", "1", "--epochs", "1,1",
                 "--save-models", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    fpe = [r for r in res["runs"] if r["rule"] == "random"]
    assert {r["depth"] for r in fpe} == {1, 2}
    assert all("model_dir" in r for r in res["runs"])
    _, _, x_te, y_te = train_test_split(*load_task("digits")[:2], seed=0)
    for r in res["runs"]:
        model, tokenizer = load_model(str(out / r["model_dir"]))
        assert tokenizer is None and isinstance(model, MaskedMLP)
        assert accuracy(model, x_te, y_te) == r["test_accuracy"]  # the saved network is the measured one
        assert count_nonzeros(model) == r["nonzeros"]
        record = read_record(out / r["model_dir"])
        assert (record["method"], record["rule"], record["seed"]) == ("fpe", r["rule"], r["seed"])
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl")) and not list(out.rglob("config.json"))


BAD = [
    (["--task", "dnf", "--alpha", "1"], "--alpha must be at least 2"),
    (["--task", "dnf", "--alpha", "40"], "--alpha 40 exceeds the 32 inputs of --task dnf"),
    (["--task", "dnf", "--rule", "magic"], "unknown --rule magic"),
    (["--task", "dnf", "--rule", "random,random"], "--rule names random more than once"),
    (["--task", "dnf", "--rule", ","], "--rule needs at least one rule"),
    (["--task", "digits", "--rule", "clause"], "the clause rule needs a task with clauses"),
    (["--task", "digits", "--study", "point"], "--study applies to --task dnf only"),
    (["--task", "bible", "--clauses", "8"], "--clauses applies to --task dnf only"),
    (["--task", "dnf", "--depth", "2"], "--depth applies to real-data tasks"),
    (["--task", "dnf", "--study", "point", "--alpha", "4"], "--study point sets --alpha itself"),
    (["--task", "dnf", "--study", "clauses", "--clauses", "16"], "--study clauses sets --clauses itself"),
    (["--task", "dnf", "--clauses", "0"], "--clauses must be at least 1"),
    (["--task", "dnf", "--clauses", "100"], "--clauses 100 is too many"),
    (["--task", "dnf", "--seeds", "0"], "--seeds must be at least 1"),
    (["--task", "dnf", "--threads", "0"], "--threads must be at least 1"),
    (["--task", "digits", "--depth", "0"], "--depth must be at least 1"),
    (["--task", "dnf", "--epochs", "3"], "--epochs takes WARMUP,POST"),
    (["--task", "dnf", "--epochs", "3,-1"], "--epochs takes WARMUP,POST"),
    (["--task", "dnf", "--epochs", "a,b"], "--epochs takes integers"),
    (["--task", "dnf", "--neurons", "x"], "--neurons takes integers"),
    (["--task", "dnf", "--neurons", "4,8"], "--task dnf takes one --neurons value"),
    (["--task", "digits", "--neurons", "4,0"], "--neurons needs positive integers"),
    (["--task", "dnf", "--out", "NONEMPTY"], "already exists and is not empty"),
    (["--task", "dnf", "--out", "FILE/sub"], "cannot be written"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import sparse_expansion.fpe.run as run

    def no_work(*_a, **_k):
        raise AssertionError("the study started before the bad input was refused")

    monkeypatch.setattr(run, "run_study", no_work)
    (tmp_path / "NONEMPTY").mkdir()
    (tmp_path / "NONEMPTY" / "old").write_text("old")
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("NONEMPTY", "FILE/sub") else a for a in argv]
    out = tmp_path / "o"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    assert main(["fpe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sparse-expansion fpe: error: "), err
    assert not out.exists() and not list(tmp_path.glob(".o.tmp-*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "NONEMPTY"]
    assert [p.name for p in (tmp_path / "NONEMPTY").iterdir()] == ["old"]


@pytest.mark.parametrize("argv", [["--task", "mnist"], ["--task", "dnf", "--study", "big"], ["--task", "dnf"],
                                  ["--task", "dnf", "--alpha", "two"]])
def test_bad_flags_are_argparse_errors_exit_2(tmp_path, capsys, argv):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main(["fpe", *argv, *(["--out", str(out)] if argv != ["--task", "dnf"] else [])])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("sparse-expansion fpe: error: ") and "Traceback" not in err
    assert not out.exists()


def test_dense_match_interpolates():
    runs = [
        {"rule": "dense", "depth": 1, "nonzeros": n, "test_accuracy": a}
        for n, a in [(100, 0.5), (400, 0.7), (1600, 0.9)]
    ]
    assert dense_match(runs, 1, 0.6) == pytest.approx(200.0)  # halfway in log space
    assert dense_match(runs, 1, 0.4) == 100.0
    assert dense_match(runs, 1, 0.95) is None

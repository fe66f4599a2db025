"""`sparse-expansion ncen`: results.json schema from a tiny run, bad input, the tie-in measurements."""

import json

import pytest
import torch

from sparse_expansion.cli import main
from sparse_expansion.ncen.methods import METHODS

TINY = ["--data", "digits", "--limit", "120", "--epochs", "6", "--steps", "3", "--hidden", "16", "--tie-in", "none"]


def test_tiny_run_writes_the_promised_schema(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["ncen", *TINY, "--methods", "ncen,independent,single", "--seeds", "1,2",
                 "--eps", "0.05,0.2,0.3", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json", "robust_accuracy.png",
                                                     "transfer_matrices.png"]
    res = json.loads((out / "results.json").read_text())
    assert res["eps"] == [0.05, 0.2, 0.3] and res["headline_eps"] == 0.2
    assert len(res["runs"]) == 6
    for run in res["runs"]:
        assert run["method"] in ("ncen", "independent", "single") and run["seed"] in (1, 2)
        assert 0 <= run["clean_accuracy"] <= 1
        for attack in ("fgsm", "pgd", "apgd", "pgd_logits", "worst"):
            assert set(run["robust_accuracy"][attack]) == {"0.05", "0.2", "0.3"}
            assert all(0 <= v <= 1 for v in run["robust_accuracy"][attack].values())
        if run["method"] == "single":
            assert run["transfer_rate"] is None and run["gradient_cosine"] is None
        else:
            assert 0 <= run["transfer_rate"] <= 1 and -1 <= run["gradient_cosine"] <= 1
            assert len(run["transfer_matrix"]) == 3
    report = (out / "report.md").read_text()
    assert "Verdict" in report and "target" in report
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("extra, words", [
    (["--methods", "ncen,bogus"], "bogus"),
    (["--seeds", "1,x"], "--seeds"),
    (["--seeds", "1,1"], "repeats"),
    (["--seeds", ""], "--seeds"),
    (["--eps", "0.1,2"], "--eps"),
    (["--eps", "a,b"], "--eps"),
    (["--eps", "0,0.1"], "--eps"),
    (["--eps", "0.1,0.2", "--headline-eps", "0.3"], "--headline-eps"),
    (["--headline-eps", "0.3"], "--headline-eps"),
    (["--members", "1"], "--members"),
    (["--attacks", "pgd,cw"], "cw"),
    (["--ncen-ce", "both"], "ce"),
    (["--ncen-direction", "nan"], "finite"),
    (["--data", "plays", "--arch", "cnn"], "cnn"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    code = main(["ncen", *TINY, *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and words in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_non_empty_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert main(["ncen", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_every_method_weight_is_a_flag(capsys):
    with pytest.raises(SystemExit):
        main(["ncen", "--help"])
    text = capsys.readouterr().out
    for method in METHODS.values():
        for name in method.config.__dataclass_fields__:
            assert f"--{method.name}-{name.replace('_', '-')}" in text


def test_tie_in_experts_are_near_copies_and_fpe_layer0_siblings_are_orthogonal():
    from sparse_expansion.ncen import tie_in

    torch.set_num_threads(1)
    se = tie_in.tiny_expert_study(experts=4)
    for st in se["linears"].values():
        assert st["among_experts"]["gradient_cosine"] > 0.5  # pruned copies of one weight
        assert abs(st["random_matrices"]["gradient_cosine"]) < 0.2
        assert st["among_experts"]["pairs"] == 6
        assert st["mask_jaccard"] > st["mask_jaccard_random"]  # experts keep largely the same weights
    fpe = tie_in.fpe_children_study(hidden=8, examples=50)
    assert fpe["layers"]["0"]["siblings"]["gradient_cosine"] == 0.0  # disjoint masks
    assert fpe["layers"]["0"]["siblings"]["transfer_ratio"] == 0.0
    assert -1 <= fpe["layers"]["1"]["siblings"]["gradient_cosine"] <= 1

"""lm-evaluation-harness on our models, offline: the built-in local task, on dense and expanded tiny
models; bad inputs refused with one line and nothing at --out."""

import json
import sys

import pytest
from helpers import run_cli


def test_next_line_questions_are_true_continuations():
    from sparse_expansion.lmeval import next_line_questions, verse_lines

    text = ("HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
            "The slings and arrows of outrageous fortune,\n\n[Exit.]\n\nOPHELIA.\n"
            "Good my lord, how does your honour for this many a day?\nI humbly thank you; well, well, well.\n"
            "My lord, I have remembrances of yours\nThat I have longed long to re-deliver.\n")
    runs = verse_lines(text)
    assert runs[0][0].startswith("To be") and len(runs[0]) == 3 and len(runs) == 2
    pairs = {(run[i], run[i + 1]) for run in runs for i in range(len(run) - 1)}
    questions = next_line_questions({"hamlet": text}, n=4, seed=1)
    assert questions == next_line_questions({"hamlet": text}, n=4, seed=1)  # seeded
    for q in questions:
        context = q["context"].split("\n")
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4 and not set(context) & set(q["choices"])
        assert (context[-1], q["choices"][q["label"]]) in pairs and 1 <= len(context) <= 3
        assert all((a, b) in pairs for a, b in zip(context, context[1:]))  # consecutive lines of one speech
    with pytest.raises(Exception, match="fewer than"):
        next_line_questions({"hamlet": text}, n=50)


def test_lm_eval_local_task_dense_and_expanded(tmp_path, tiny_model_dir, text_file, capsys):
    pytest.importorskip("lm_eval")
    expanded = tmp_path / "se"
    code, _, err = run_cli(["expand", tiny_model_dir, "--experts", "2", "--sparsity", "0.5", "--out", expanded,
                        "--calib", text_file, "--calib-windows", "2", "--seqlen", "16"], capsys)
    assert code == 0, err
    for model, out in ((tiny_model_dir, tmp_path / "dense-scores"), (expanded, tmp_path / "se-scores")):
        code, stdout, err = run_cli(["lm-eval", model, "--tasks", "shakespeare_next_line", "--limit", "6",
                                 "--questions", "12", "--batch-size", "4", "--json", "--out", out], capsys)
        assert code == 0, err
        result = json.loads(stdout.strip().splitlines()[-1])
        scores = result["results"]["shakespeare_next_line"]
        assert 0 <= scores["acc,none"] <= 1 and 0 <= scores["acc_norm,none"] <= 1
        assert result["n_samples"]["shakespeare_next_line"] == {"original": 12, "effective": 6}
        assert json.loads((out / "results.json").read_text())["results"] == result["results"]


def test_lm_eval_on_own_task_folder(tmp_path, tiny_model_dir, capsys):
    """A user's own local task through --include-path (here: the built-in one, written to a folder)."""
    pytest.importorskip("lm_eval")
    from sparse_expansion.lmeval import write_next_line_task

    tasks = write_next_line_task(tmp_path / "tasks", n=8)
    yaml = (tasks / "shakespeare_next_line.yaml").read_text()
    (tasks / "shakespeare_next_line.yaml").write_text(yaml.replace("task: shakespeare_next_line", "task: my_lines"))
    code, stdout, err = run_cli(["lm-eval", tiny_model_dir, "--tasks", "my_lines", "--include-path", tasks,
                             "--limit", "4"], capsys)
    assert code == 0, err
    assert "my_lines" in stdout and "acc" in stdout


BAD = [
    (["--tasks", " , "], "--tasks is empty"),
    (["--tasks", "no_such_task_xyz"], "unknown lm-eval task no_such_task_xyz"),
    (["--tasks", "shakespeare_next_line", "--limit", "0"], "--limit must be at least 1"),
    (["--tasks", "shakespeare_next_line", "--num-fewshot", "-1"], "--num-fewshot must be 0 or more"),
    (["--tasks", "shakespeare_next_line", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--tasks", "shakespeare_next_line", "--include-path", "MISSING"], "is not a folder"),
    (["--tasks", "shakespeare_next_line", "--out", "FULL"], "not empty"),
    (["--tasks", "shakespeare_next_line", "--model", "MISSING"], "not found"),
    (["--tasks", "shakespeare_next_line", "--device", "tpu"], "unknown --device"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[b[1][:24] for b in BAD])
def test_bad_lm_eval_input(tmp_path, tiny_model_dir, capsys, flags, message):
    pytest.importorskip("lm_eval")
    out = tmp_path / "out"
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    model = tiny_model_dir
    args = []
    for i, flag in enumerate(flags):
        value = {"MISSING": str(tmp_path / "nope"), "FULL": str(full)}.get(flag, flag)
        if i and flags[i - 1] == "--model":
            model = value
        elif flag != "--model":
            args.append(value)
    if "--out" not in flags:
        args += ["--out", str(out)]
    code, _, err = run_cli(["lm-eval", model, *args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and (full / "keep.txt").read_text() == "x"
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_lm_eval_missing_is_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails as if not installed
    code, _, err = run_cli(["lm-eval", tiny_model_dir, "--tasks", "shakespeare_next_line"], capsys)
    assert code == 2 and "lm-eval is not installed" in err and len(err.strip().splitlines()) == 1

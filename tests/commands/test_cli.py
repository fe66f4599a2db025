"""The command line: every bad input gets one line and exit code 2, and nothing at --out."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import run_cli

from sparse_expansion.cli import main


def test_prune_eval_generate_roundtrip(tmp_path, tiny_model_dir, text_file, capsys):
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(["prune", tiny_model_dir, "--method", "sparsegpt", "--sparsity", "2:4",
                             "--out", out, "--calib", text_file, "--calib-windows", "4", "--seqlen", "32"],
                            capsys)
    assert code == 0, err
    record = json.loads((out / "sparse_expansion.json").read_text())["record"]
    assert record["method"] == "sparsegpt" and record["sparsity"] == "2:4"
    assert all(r["sparsity"] == 0.5 for r in record["linears"].values())
    assert record["calibration"]["windows"] == 4
    code, stdout, err = run_cli(["eval", out, "--data", text_file, "--windows", "3", "--seqlen", "32", "--json"],
                            capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert {"perplexity", "windows", "seqlen", "tokens", "model", "data", "flops_per_token",
            "nonzeros"} <= set(result)
    assert result["windows"] == 3 and result["tokens"] == 3 * 31 and result["perplexity"] > 1
    code, dense_out, _ = run_cli(["eval", tiny_model_dir, "--data", text_file, "--windows", "3",
                              "--seqlen", "32", "--json"], capsys)
    dense = json.loads(dense_out.strip().splitlines()[-1])
    mlp = 2 * 3 * 32 * 64  # two layers: gate, up, down of 32x64
    assert dense["nonzeros"] - result["nonzeros"] == mlp // 2
    assert dense["flops_per_token"] - result["flops_per_token"] == mlp
    code, stdout, err = run_cli(["generate", out, "--prompt", "To be", "--max-new-tokens", "5"], capsys)
    assert code == 0 and stdout.startswith("To be"), err


BAD = [
    (["--sparsity", "1.2"], "outside [0, 1)"),
    (["--sparsity", "2:x"], "malformed N:M"),
    (["--sparsity", "3:2"], "malformed N:M"),
    (["--seqlen", "100000"], "exceeds the model's context"),
    (["--calib-windows", "100000"], "fewer than 100000 calibration windows"),
    (["--calib", "does/not/exist.txt"], "neither a known name"),
    (["--calib", "EMPTY"], "is empty"),
    (["--bits", "4", "--method", "wanda"], "--bits needs --method sparsegpt"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_prune_input(tmp_path, tiny_model_dir, text_file, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    extra = [str(empty) if e == "EMPTY" else e for e in extra]
    args = {"--method": "sparsegpt", "--sparsity": "0.5", "--calib": str(text_file),
            "--calib-windows": "2", "--seqlen": "16"}
    for key, value in zip(extra[::2], extra[1::2]):
        args[key] = value
    out = tmp_path / "out"
    flat = [a for kv in args.items() for a in kv]
    code, _, err = run_cli(["prune", tiny_model_dir, "--out", out, *flat], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_missing_model_and_nonempty_out(tmp_path, tiny_model_dir, capsys):
    code, _, err = run_cli(["eval", tmp_path / "nope"], capsys)
    assert code == 2 and "not found" in err
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5", "--out", out],
                       capsys)
    assert code == 2 and "not empty" in err and (out / "keep.txt").read_text() == "x"


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", "prune", str(tmp_path / "nope"),
                           "--method", "wanda", "--sparsity", "0.5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_failure_midway_leaves_nothing(tmp_path, tiny_model_dir, text_file, capsys, monkeypatch):
    import sparse_expansion.artifact as artifact

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifact, "save_artifact", boom)
    with pytest.raises(RuntimeError):
        main(["prune", str(tiny_model_dir), "--method", "magnitude", "--sparsity", "0.5",
              "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
    torch.manual_seed(0)


def test_run_record_reports_mean_sparsity(tmp_path, tiny_model_dir, text_file, capsys):
    commands = (["prune", "--method", "wanda", "--sparsity", "0.5"], ["expand", "--experts", "2", "--sparsity", "0.5"])
    for command in commands:
        out = tmp_path / command[0]
        code, _, err = run_cli([command[0], tiny_model_dir, *command[1:], "--out", out, "--calib", text_file,
                            "--calib-windows", "2", "--seqlen", "16"], capsys)
        assert code == 0, err
        assert json.loads((out / "sparse_expansion.json").read_text())["record"]["mean_sparsity"] == 0.5


def test_no_command_imports_another_command():
    """Commands share flags through commands/common.py only (issue 22): a command importing another
    drags its parser and imports along, and the two drift."""
    import ast
    from pathlib import Path

    import sparse_expansion.commands as package

    folder = Path(package.__file__).parent
    commands = {p.stem for p in folder.glob("*.py")} - {"__init__", "common"}
    offenders = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                offenders += [f"{path.name} -> {n}" for n in names if n in commands]
    assert len(commands) > 10 and offenders == []

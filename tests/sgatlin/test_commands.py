"""The sgatlin commands (train, isoflop, gating) from the command line: every bad input is exit 2
with one line on stderr, no traceback and nothing written, and is refused before the data is
prepared; every flag has help text with its default; train resumes exactly; gating records the
routers' own choices."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_expansion.artifact import load_artifact
from sparse_expansion.cli import build_parser, main
from sparse_expansion.io import read_json
from sparse_expansion.sgatlin import data as sgatlin_data
from sparse_expansion.sgatlin.checkpoint import complete_checkpoints
from sparse_expansion.sgatlin.data import (
    TokenData,
    encode_documents,
    save_token_data,
    train_tokenizer,
    val_windows,
)
from sparse_expansion.sgatlin.gating.record import record
from sparse_expansion.sgatlin.training import LMTrainConfig, plan, train

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = ("And God said, Let there be light: and there was light. And God saw the light, that it "
        "was good: and God divided the light from the darkness. And the evening and the morning "
        "were the first day. ") * 12
SEQ, BATCH = 16, 4


def tiny_data() -> TokenData:
    tok = train_tokenizer([TEXT], vocab_size=300)
    stream = encode_documents(tok, {"a": TEXT})
    return TokenData(tok, stream, stream.copy())


def budget_for(ffn: str, steps: int, data: TokenData) -> float:
    cfg = LMTrainConfig(ffn=ffn, scale=0.5, budget=1e30, batch_size=BATCH, seq_len=SEQ)
    _, fpt, _ = plan(cfg, data.vocab_size)
    return 3 * fpt * BATCH * SEQ * steps


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Saved tokens, a trained sgatlin run, a trained mlp run, and the train flags for 6 steps."""
    root = tmp_path_factory.mktemp("sgatlin_cli")
    data = tiny_data()
    save_token_data(data, root / "data")
    flags = ["--scale", "0.5", "--batch-size", str(BATCH), "--seq-len", str(SEQ),
             "--data-dir", str(root / "data"), "--no-progress"]
    for ffn in ("sgatlin", "mlp"):
        cfg = LMTrainConfig(ffn=ffn, scale=0.5, budget=budget_for(ffn, 6, data), batch_size=BATCH,
                          seq_len=SEQ)
        train(cfg, data, root / f"run_{ffn}", progress=False)
    return {"root": root, "data": data, "flags": flags,
            "budget": repr(budget_for("sgatlin", 6, data))}


@pytest.fixture()
def no_data_preparation(monkeypatch):
    """Every path to the corpora fails the test: bad input must be refused before them."""
    def forbidden(*_a, **_k):
        raise AssertionError("reached data preparation")

    for name in ("prepare_data", "load_token_data", "split_documents"):
        monkeypatch.setattr(sgatlin_data, name, forbidden)


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def corrupt_checkpoint(world, tmp_path: Path, file: str) -> Path:
    """OUT.ckpt for --out tmp_path/out, from a real stopped run, with `file` truncated."""
    cfg = LMTrainConfig(ffn="sgatlin", scale=0.5, budget=float(world["budget"]), batch_size=BATCH,
                      seq_len=SEQ)
    ckpt = tmp_path / "out.ckpt"
    train(cfg, world["data"], None, ckpt, stop_after=2, progress=False)
    path = complete_checkpoints(ckpt)[-1] / file
    path.write_bytes(path.read_bytes()[:100])
    return ckpt


# (command, extra arguments, message); OUT is the folder that must stay empty, RUN_* trained runs,
# DATA the saved tokens, CKPT_* a checkpoint at OUT.ckpt with that file truncated.
BAD = [
    ("train", ["--budget", "0"], "--budget must be a positive"),
    ("train", ["--budget", "nan"], "--budget must be a positive"),
    ("train", ["--budget", "10"], "buys no step"),
    ("train", ["--scale", "0.7"], "multiple of 0.5"),
    ("train", ["--scale", "-1"], "--scale must be a positive"),
    ("train", ["--lr", "0"], "--lr must be a positive"),
    ("train", ["--lr=-1e-3"], "--lr must be a positive"),
    ("train", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("train", ["--seq-len", "0"], "--seq-len must be at least 1"),
    ("train", ["--threads", "0"], "--threads must be at least 1"),
    ("train", ["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
    ("train", ["--ffn", "mlp", "--activation", "gelu"], "applies to --ffn sgatlin only"),
    ("train", ["--activation", "nope"], "unknown activation"),
    ("train", ["--data-dir", "OUT"], "has no tokenizer.json"),
    ("train", ["--resume"], "nothing to resume"),
    ("train", ["--resume", "CKPT_model.safetensors"], "cannot load"),
    ("train", ["--resume", "CKPT_optimizer.safetensors"], "optimizer.safetensors"),
    ("train", ["--resume", "CKPT_state.json"], "not valid JSON"),
    ("isoflop", ["--budgets", "abc"], "expected comma-separated numbers"),
    ("isoflop", ["--budgets", "0"], "budgets must be positive"),
    ("isoflop", ["--ablation-budget", "-1"], "budgets must be positive"),
    ("isoflop", ["--scales", "0.7"], "multiple of 0.5"),
    ("isoflop", ["--ffn", "mlp,foo"], "unknown --ffn foo"),
    ("isoflop", ["--jobs", "0"], "--jobs must be at least 1"),
    ("isoflop", ["--batch-size", "0"], "--batch-size must be at least 1"),
    ("isoflop", ["--budgets", "1e3"], "every run has fewer than 20 steps"),
    ("isoflop", ["--data-dir", "OUT"], "has no tokenizer.json"),
    ("gating", ["RUN_missing"], "not found"),
    ("gating", ["RUN_mlp"], "needs a model trained with --ffn sgatlin"),
    ("gating", ["RUN_truncated"], "cannot load"),
    ("gating", ["RUN_old"], "older sparse-expansion"),
    ("gating", ["RUN_sgatlin", "--layer", "5"], "--layer 5 is out of range"),
    ("gating", ["RUN_sgatlin", "--channel", "-1"], "--channel -1 is out of range"),
    ("gating", ["RUN_sgatlin", "--max-tokens", "0"], "--max-tokens must be at least 1"),
    ("gating", ["RUN_sgatlin", "--data", "missing.txt"], "use 'val', 'train' or a text file"),
    ("gating", ["RUN_sgatlin", "--data", "BINARY"], "is not UTF-8 text"),
]


def _argv(command: str, extra: list[str], world, tmp_path: Path) -> list[str]:
    out = tmp_path / "out"
    runs = {"RUN_sgatlin": world["root"] / "run_sgatlin", "RUN_mlp": world["root"] / "run_mlp",
            "RUN_missing": tmp_path / "nowhere"}
    if "RUN_truncated" in extra:
        runs["RUN_truncated"] = tmp_path / "truncated"
        shutil.copytree(runs["RUN_sgatlin"], runs["RUN_truncated"])
        weights = runs["RUN_truncated"] / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    if "RUN_old" in extra:  # the layout of earlier versions: config.json, no manifest
        runs["RUN_old"] = tmp_path / "old"
        runs["RUN_old"].mkdir()
        for name in ("metrics.json", "model.safetensors", "tokenizer.json"):
            shutil.copy(runs["RUN_sgatlin"] / name, runs["RUN_old"] / name)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    args = []
    for a in extra:
        if a.startswith("CKPT_"):
            corrupt_checkpoint(world, tmp_path, a[5:])
            continue
        args.append({"OUT": str(out), "BINARY": str(binary), "missing.txt": str(tmp_path / "m.txt"),
                     **{k: str(v) for k, v in runs.items()}}.get(a, a))
    if command == "train":
        base = ["--ffn", "sgatlin", "--budget", world["budget"], *world["flags"]]
        base = [b for b in base if b not in ("--data-dir", str(world["root"] / "data"))]
        return ["train", *base, *args, "--out", str(out)]
    if command == "isoflop":
        return ["isoflop", "--budgets", "1e9", "--scales", "0.5", *args, "--out", str(out)]
    return ["gating", *args, "--out", str(out)]


@pytest.mark.parametrize("command,extra,message", BAD, ids=[f"{c} {' '.join(e)}" for c, e, _ in BAD])
def test_bad_input_is_one_line_exit_2_before_data(world, tmp_path, capsys, no_data_preparation,
                                                  command, extra, message):
    argv = _argv(command, extra, world, tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_bad_input_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", "train", "--ffn", "sgatlin",
                           "--scale", "0.5", "--budget", "-5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "sparse-expansion train: error: --budget must be a positive number (got -5.0)"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["train", "isoflop", "gating"])
def test_every_flag_has_help_with_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices).choices[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        if not action.required and action.option_strings:
            assert "default" in action.help, f"{command} {action.option_strings} names no default"


def test_help_does_not_import_torch():
    code = ("import sys, argparse\n"
            "from sparse_expansion.commands import train, isoflop, gating\n"
            "p = argparse.ArgumentParser().add_subparsers()\n"
            "[m.register(p) for m in (train, isoflop, gating)]\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_train_resumes_exactly_from_the_command_line(world, tmp_path, capsys):
    argv = ["train", "--ffn", "sgatlin", "--budget", world["budget"], *world["flags"]]
    code, _, err = run([*argv, "--out", tmp_path / "full"], capsys)
    assert code == 0, err
    assert not (tmp_path / "full.ckpt").exists()  # checkpoints go once the run is saved
    full = read_json(tmp_path / "full" / "metrics.json")
    cfg = LMTrainConfig(ffn="sgatlin", scale=0.5, budget=float(world["budget"]), batch_size=BATCH,
                      seq_len=SEQ)
    train(cfg, world["data"], None, tmp_path / "cut.ckpt", stop_after=3, progress=False)
    code, out, err = run([*argv, "--resume", "--out", tmp_path / "cut"], capsys)
    assert code == 0, err
    assert "6 steps" in out
    resumed = read_json(tmp_path / "cut" / "metrics.json")
    assert resumed["loss_history"] == full["loss_history"] and resumed["steps"] == 6
    a, _ = load_artifact(tmp_path / "full")
    b, _ = load_artifact(tmp_path / "cut")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                  strict=True))


def test_gating_records_what_the_routers_chose(world, tmp_path, capsys, monkeypatch):
    data = world["data"]
    text = tmp_path / "probe.txt"
    text.write_text(TEXT)
    # the training split the facts come from: our tiny text instead of Shakespeare + KJV
    monkeypatch.setattr(sgatlin_data, "split_documents", lambda: ({"a": TEXT}, {"b": TEXT}))
    run_dir = world["root"] / "run_sgatlin"
    code, out, err = run(["gating", run_dir, "--data", text, "--max-tokens", "64", "--out",
                          tmp_path / "look"], capsys)
    assert code == 0, err
    look = tmp_path / "look"
    for name in ("report.md", "usage.json", "neighbours.json", "causal.json", "usage.png",
                 "gating_matrix.png", "coactivation.png"):
        assert (look / name).is_file(), name
    from safetensors.numpy import load_file

    saved = load_file(str(look / "gating.safetensors"))
    model, tokenizer = load_artifact(run_dir)
    stream = encode_documents(tokenizer, {"text": TEXT})
    windows = val_windows(stream, 64 // SEQ, SEQ)[:, :-1]
    direct = record(model, windows)
    assert np.array_equal(saved["tokens"], windows.flatten().numpy())
    assert np.array_equal(saved["indices"], direct.indices)
    assert np.array_equal(saved["scores"], direct.scores)
    usage = read_json(look / "usage.json")
    assert len(usage) == model.cfg.n_layers and out.startswith("layer 0: ")
    assert data.vocab_size == tokenizer.get_vocab_size()

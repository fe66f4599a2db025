"""Bad input, tried as a new user would: one stderr line, exit code 2, no traceback, nothing written,
and refused before any slow work. One table per kind of mistake."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import run_cli, tiny_model

from sparse_expansion.cli import build_parser


def assert_refused(code, err, message, out_dir=None, after_work=False):
    """Exit 2, one stderr line naming the problem, nothing at out_dir. After the work began, the
    progress lines before it stay: then the error is the one last line."""
    assert code == 2, err
    assert message in err, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and (lines[-1:] if after_work else lines) == [lines[-1]], err
    assert message in lines[-1], err
    if out_dir is not None:
        assert not out_dir.exists()
        assert not list(out_dir.parent.glob(f".{out_dir.name}.tmp-*"))


@pytest.fixture
def binary_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 8)
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Checks that must come first: loading a model (slow on a real one) fails the test."""
    import sparse_expansion.models as models

    def forbidden(*_a, **_k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", forbidden)


# ---------------------------------------------------------------- refused before the model loads

EARLY = [
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--seqlen", "1"], "--seqlen 1 is too short"),
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--calib", "BINARY"], "not UTF-8 text"),
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--calib", "nope.txt"], "neither a known name"),
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--calib-windows", "0"], "--calib-windows must be"),
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--batch-size", "0"], "--batch-size must be"),
    (["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--out", "FILE/sub"], "cannot be written"),
    (["expand", "--experts", "64", "--sparsity", "0.5", "--calib-windows", "2", "--seqlen", "16"],
     "64 experts need at least 64 calibration tokens"),
    (["expand", "--experts", "4", "--memory-budget", "5"], "--memory-budget 5 with 4 experts"),
    # TINY: a real model folder, whose config.json (not its weights) shows the layer widths (32, 64)
    (["prune", "TINY", "--method", "sparsegpt", "--sparsity", "2:3"], "32 inputs, not a multiple of M=3"),
    (["expand", "TINY", "--experts", "2", "--sparsity", "3:6"], "32 inputs, not a multiple of M=6"),
    (["eval", "--data", "BINARY"], "not UTF-8 text"),
    (["eval", "--seqlen", "1"], "--seqlen 1 is too short"),
    (["eval", "--windows", "-1"], "--windows must be 0 (all) or positive"),
    (["demo", "--methods", "magnitude,obs"], "unknown method(s) obs"),
    (["demo", "--experts", "-1"], "--experts must be 0"),
    (["generate", "--prompt", "  "], "--prompt is empty"),
    (["generate", "--prompt", "x", "--temperature", "-1"], "--temperature must be >= 0"),
]


@pytest.mark.parametrize("args,message", EARLY, ids=[" ".join(a[:3]) for a, _ in EARLY])
def test_refused_before_loading_the_model(tmp_path, text_file, binary_file, no_model_load, capsys, request, args,
                                          message):
    (tmp_path / "FILE").write_text("x")
    replace = {"BINARY": str(binary_file), "nope.txt": str(tmp_path / "nope.txt"),
               "FILE/sub": str(tmp_path / "FILE" / "sub")}
    model = "some-model"
    if args[1:2] == ["TINY"]:
        model, args = str(request.getfixturevalue("tiny_model_dir")), [args[0], *args[2:]]
        capsys.readouterr()  # what writing the folder printed
    args = [replace.get(a, a) for a in args]
    if args[0] in ("prune", "expand") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    if args[0] in ("prune", "expand") and "--calib" not in args:
        args += ["--calib", str(text_file)]
    code, _, err = run_cli([args[0], model, *args[1:]], capsys)
    assert_refused(code, err, message, tmp_path / "out")


# ---------------------------------------------------------------- places that cannot be written

# os.access approves /proc for root (most containers), yet mkdir there fails for everyone: only
# creating the output folder tells. Each command must find out before its slow work.
NO_WRITE = "/proc/sparse-expansion-test/out"
UNWRITABLE = [  # (command line, the slow step that must not start)
    (["prune", "MODEL", "--method", "magnitude", "--sparsity", "0.5", "--out", NO_WRITE], "models:load_model"),
    (["expand", "MODEL", "--experts", "2", "--sparsity", "0.5", "--out", NO_WRITE], "models:load_model"),
    (["export", "MODEL", "--format", "compressed-tensors", "--out", NO_WRITE], "models:load_model"),
    (["neurons", "MODEL", "--out", NO_WRITE], "models:load_model"),
    (["lm-eval", "MODEL", "--tasks", "next_line", "--out", NO_WRITE], "models:load_model"),
    (["train", "--ffn", "mlp", "--scale", "1", "--budget", "1e9", "--out", NO_WRITE], "commands.train:load_data"),
    (["train", "--ffn", "mlp", "--scale", "1", "--budget", "1e9", "--out", "OUT", "--save-data", NO_WRITE],
     "commands.train:load_data"),
    (["isoflop", "--budgets", "1e12", "--ffn", "mlp", "--out", NO_WRITE], "sgatlin.isoflop:plan_runs"),
    (["gating", "RUN", "--out", NO_WRITE], "sgatlin.gating.study:load_run"),
    (["fpe", "--task", "dnf", "--study", "point", "--out", NO_WRITE], "fpe.run:_run_dnf"),
    (["ncen", "--out", NO_WRITE], "ncen.data:load"),
]


@pytest.mark.parametrize("args,slow", UNWRITABLE, ids=[f"{a[0]} {a[a.index(NO_WRITE) - 1]}" for a, _ in UNWRITABLE])
def test_unwritable_output_is_refused_before_the_work(tmp_path, tiny_model_dir, monkeypatch, capsys, args, slow):
    import importlib

    module, name = slow.split(":")

    def forbidden(*_a, **_k):
        raise AssertionError(f"{slow} ran before the unwritable --out was refused")

    monkeypatch.setattr(importlib.import_module(f"sparse_expansion.{module}"), name, forbidden)
    replace = {"MODEL": str(tiny_model_dir), "RUN": str(tmp_path / "run"), "OUT": str(tmp_path / "out")}
    code, _, err = run_cli([replace.get(a, a) for a in args], capsys)
    assert_refused(code, err, f"{NO_WRITE} cannot be written", tmp_path / "out")


# checks that came after the slow work: (command line, message, the slow step that must not start)
LATE = [
    (["ncen", "--tie-in", "smollm2", "--tie-in-layer", "5", "--out", "OUT"],
     "--tie-in-layer 5 is beyond SmolLM2-135M's 2 decoder layers", "ncen.data:load"),
]


@pytest.mark.parametrize("args,message,slow", LATE, ids=[a[0] for a, _, _ in LATE])
def test_checks_that_came_after_the_work_now_come_first(tmp_path, tiny_model_dir, monkeypatch, capsys, args,
                                                         message, slow):
    import importlib

    import sparse_expansion.models as models

    module, name = slow.split(":")

    def forbidden(*_a, **_k):
        raise AssertionError(f"{slow} ran before the bad input was refused")

    monkeypatch.setattr(importlib.import_module(f"sparse_expansion.{module}"), name, forbidden)
    monkeypatch.setattr(models, "shipped_model_dir", lambda *_a: tiny_model_dir)  # 2 decoder layers
    code, _, err = run_cli([str(tmp_path / "out") if a == "OUT" else a for a in args], capsys)
    assert_refused(code, err, message, tmp_path / "out")


def test_write_error_after_the_work_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import errno

    import sparse_expansion.artifact as artifact

    def disk_full(folder, *_a, **_k):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr(artifact, "save_artifact", disk_full)
    out = tmp_path / "out"
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5", "--out", out],
                           capsys)
    assert_refused(code, err, f"writing {out} failed (No space left on device)", out, after_work=True)


def test_output_taken_during_the_run_is_one_line_and_kept(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import sparse_expansion.artifact as artifact

    out = tmp_path / "out"
    save = artifact.save_artifact

    def someone_else_writes_out_meanwhile(folder, *a, **k):
        out.mkdir()
        (out / "theirs.txt").write_text("not ours to replace")
        return save(folder, *a, **k)

    monkeypatch.setattr(artifact, "save_artifact", someone_else_writes_out_meanwhile)
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5", "--out", out],
                           capsys)
    assert_refused(code, err, f"writing {out} failed", after_work=True)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_unwritable_cache_is_refused_before_converting_the_shipped_model(monkeypatch, capsys):
    import transformers

    def forbidden(*_a, **_k):
        raise AssertionError("the shipped model was converted before the unwritable cache was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", NO_WRITE)
    code, _, err = run_cli(["eval", "smollm2-135m"], capsys)
    assert_refused(code, err, "set SPARSE_EXPANSION_CACHE to a writable folder")


def test_unwritable_kernel_cache_is_a_failed_build_not_a_crash(monkeypatch):
    from sparse_expansion.kernels import build

    if build.find_compiler() is None:
        pytest.skip("no C++ compiler: the build fails before it looks at the cache")
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", NO_WRITE)
    with pytest.raises(build.KernelBuildError, match="cannot be written"):  # ops.py then runs the torch fallback
        build.build()


def test_unwritable_embedding_cache_only_costs_time(monkeypatch):
    from sparse_expansion.fpe import embeddings

    monkeypatch.setattr(embeddings, "embed", lambda texts: torch.ones(len(texts), 4))
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", NO_WRITE)
    x, y, classes = embeddings._cached_embeddings("plays", ["a", "b"], [0, 1], ["x", "y"])
    assert torch.equal(x, torch.ones(2, 4)) and y.tolist() == [0, 1] and classes == ["x", "y"]


def test_progress_in_a_log_is_whole_lines(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5",
                            "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "\r" not in err and "\x1b[" not in err, err  # stderr is not a terminal here: no redrawn frames
    assert any(line.startswith("layers: 100%") for line in err.splitlines()), err


# ---------------------------------------------------------------- broken models and folders


def corrupt_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


def test_corrupt_hugging_face_folder(tiny_model_dir, capsys):
    corrupt_weights(tiny_model_dir)
    code, _, err = run_cli(["eval", tiny_model_dir], capsys)
    assert_refused(code, err, "is corrupt")


def test_corrupt_cached_shipped_model_says_how_to_rebuild(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import shutil

    cached = tmp_path / "cache" / "models" / "smollm2-135m"
    shutil.copytree(tiny_model_dir, cached)
    corrupt_weights(cached)
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["eval", "smollm2-135m"], capsys)
    assert_refused(code, err, f"delete {cached} and run again")


def test_nan_weights_are_refused(tmp_path, tokenizer, capsys):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "nan")
    code, _, err = run_cli(["eval", tmp_path / "nan"], capsys)
    assert_refused(code, err, "model.layers.1.mlp.down_proj.weight holds NaN or Inf")


def test_expanded_folder_refuses_plain_transformers(tmp_path, tiny_model_dir, text_file, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "se"
    code, _, err = run_cli(["expand", tiny_model_dir, "--experts", "2", "--sparsity", "0.5", "--out", out,
                        "--calib", text_file, "--calib-windows", "2", "--seqlen", "16"], capsys)
    assert code == 0, err
    # The folder carries its own modeling code (tests/test_remote_code.py): without an explicit
    # trust_remote_code=True transformers refuses to run it, and so never builds the model.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(out)


# ---------------------------------------------------------------- outputs


def test_eval_json_is_exactly_one_stdout_line(tiny_model_dir, text_file, capsys):
    code, out, err = run_cli(["eval", tiny_model_dir, "--data", text_file, "--windows", "0", "--seqlen", "32",
                          "--json"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert "perplexity" in err  # the human summary went to stderr
    from sparse_expansion.data import corpus_tokens
    from sparse_expansion.models import load_model

    _, tokenizer = load_model(str(tiny_model_dir))
    assert result["windows"] == corpus_tokens(str(text_file), tokenizer).numel() // 32  # 0 = all windows


def test_stale_temporary_folder_of_a_killed_run_is_removed(tmp_path, tiny_model_dir, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".out.tmp-{dead}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    alive = tmp_path / f".out.tmp-{os.getpid()}-def456"  # a live run's folder is left alone
    alive.mkdir()
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5",
                        "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert not stale.exists() and alive.exists() and f"removed {stale}" in err


def test_real_process_prints_one_line_for_bad_data(tmp_path, tiny_model_dir, binary_file):
    proc = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", "eval", str(tiny_model_dir),
                           "--data", str(binary_file)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not UTF-8" in proc.stderr


# ---------------------------------------------------------------- help text


def test_every_flag_of_every_command_has_help_and_says_its_default():
    parser = build_parser()
    assert "example" in (parser.epilog or "")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = []
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            says_default = action.required or action.default in (None, False) or "default" in (action.help or "")
            if not action.help or (action.option_strings and not says_default):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


# ---------------------------------------------------------------- the token cache


def test_tokenised_corpus_is_cached_on_disk_and_keyed_by_content(tmp_path, tokenizer, monkeypatch):
    import sparse_expansion.data as data

    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be. " * 50)
    first = data.corpus_tokens(str(corpus), tokenizer)
    assert len(list((tmp_path / "cache" / "tokens").glob("*.safetensors"))) == 1
    data._TOKEN_CACHE.clear()  # a new process: only the disk remembers

    class NoTokenizing:
        eos_token_id = tokenizer.eos_token_id
        backend_tokenizer = tokenizer.backend_tokenizer

        def __call__(self, *_a, **_k):
            raise AssertionError("tokenised again although cached")

    assert torch.equal(data.corpus_tokens(str(corpus), NoTokenizing()), first)
    corpus.write_text("Something else entirely. " * 50)
    changed = data.corpus_tokens(str(corpus), tokenizer)
    assert not torch.equal(changed, first)


def test_language_model_commands_refuse_other_kinds_of_saved_model(tmp_path, capsys):
    folder = tmp_path / "mlp"
    folder.mkdir()
    (folder / "sparse_expansion.json").write_text(json.dumps(
        {"format_version": 2, "kind": "fpe_mlp", "spec": {}, "modules": {}, "record": {}}))
    for command in (["eval", folder], ["generate", folder, "--prompt", "x"]):
        code, _, err = run_cli(command, capsys)
        assert_refused(code, err, "holds a fpe_mlp model, not a causal language model")


@pytest.mark.parametrize("args", [["prune", "--method", "obs", "--sparsity", "0.5", "--out", "x"],
                                  ["eval", "--windows", "many"], ["fpe", "--alpha", "x"], ["nonsense"]])
def test_argparse_errors_are_one_line_too(args):
    proc = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "error:" in proc.stderr and "--help" in proc.stderr

"""One device and dtype path: resolution rules, and bfloat16 storage through every command."""

import json

import pytest
import torch
from helpers import run_cli

from sparse_expansion.errors import UsageError
from sparse_expansion.runtime import backend_for, resolve_device, resolve_dtype, setup


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_more_ranks_than_gpus_are_refused_in_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="2 ranks .* 1 GPU.*--nproc-per-node 1"):
        resolve_device("cuda")


def test_device_rules_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(UsageError, match="no CUDA GPU is available"):
            resolve_device(spec)
    with pytest.raises(UsageError, match="unknown --device 'gpu'"):
        resolve_device("gpu")
    assert setup("auto", "bfloat16").dtype is torch.bfloat16


def test_dtype_names_and_backends():
    assert [resolve_dtype(n) for n in ("float32", "bfloat16", "float16")] == [torch.float32, torch.bfloat16,
                                                                            torch.float16]
    with pytest.raises(UsageError, match="unknown --dtype 'fp8'"):
        resolve_dtype("fp8")
    assert (backend_for("cuda:1"), backend_for("cpu")) == ("nccl", "gloo")


def test_bfloat16_eval_stays_close_to_float32(tiny_model_dir, text_file, capsys):
    results = {}
    for dtype in ("float32", "bfloat16"):
        code, out, err = run_cli(["eval", tiny_model_dir, "--data", text_file, "--windows", "3", "--seqlen", "32",
                              "--json", "--dtype", dtype, "--device", "cpu"], capsys)  # "auto" is a GPU where one is
        assert code == 0, err
        results[dtype] = json.loads(out)
    assert results["bfloat16"]["dtype"] == "bfloat16" and results["bfloat16"]["device"] == "cpu"
    a, b = results["float32"]["perplexity"], results["bfloat16"]["perplexity"]
    assert a != b and b == pytest.approx(a, rel=0.05)


def test_bfloat16_prune_and_expand_keep_their_invariants(tmp_path, tiny_model_dir, text_file, capsys):
    from sparse_expansion.expand import SparseExpertLinear
    from sparse_expansion.models import load_model

    calib = ["--calib", text_file, "--calib-windows", "4", "--seqlen", "32", "--dtype", "bfloat16"]
    code, _, err = run_cli(["prune", tiny_model_dir, "--method", "sparsegpt", "--sparsity", "2:4",
                        "--out", tmp_path / "p", *calib], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "p" / "sparse_expansion.json").read_text())["record"]
    assert record["dtype"] == "bfloat16" and all(r["sparsity"] == 0.5 for r in record["linears"].values())

    code, _, err = run_cli(["expand", tiny_model_dir, "--experts", "2", "--sparsity", "0.5", "--out", tmp_path / "e",
                        *calib], capsys)
    assert code == 0, err
    model, _ = load_model(str(tmp_path / "e"), dtype=torch.bfloat16)
    experts = [m for m in model.modules() if isinstance(m, SparseExpertLinear)]
    assert experts and all(m.value_dtype is torch.bfloat16 for m in experts)
    assert all(m.router.components.dtype is torch.float32 for m in experts)  # routes do not depend on dtype
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    again, _ = load_model(str(tmp_path / "e"), dtype=torch.bfloat16)
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_training_under_bfloat16_autocast_learns_like_float32(tmp_path, single_thread):
    from sparse_expansion.sgatlin.data import TokenData, encode_documents, train_tokenizer
    from sparse_expansion.sgatlin.training import LMTrainConfig, plan, train

    text = "In the beginning God created the heaven and the earth. And the earth was without form. " * 6
    tok = train_tokenizer([text], vocab_size=300)
    stream = encode_documents(tok, {"a": text})[:400]
    data = TokenData(tok, stream, stream.copy())
    cfg = LMTrainConfig(ffn="swiglu", scale=0.5, budget=1e30, batch_size=4, seq_len=32, lr=3e-3, val_windows=8,
                      warmup_steps=2)
    _, fpt, _ = plan(cfg, data.vocab_size)
    cfg.budget = 3 * fpt * 4 * 32 * 20
    full = train(cfg, data, tmp_path / "fp32", progress=False)
    amp = train(cfg, data, tmp_path / "bf16", progress=False, autocast=torch.bfloat16)
    assert amp["val_loss"] != full["val_loss"]  # the forward pass really ran in bfloat16
    assert amp["val_loss"] == pytest.approx(full["val_loss"], abs=0.15)
    assert amp["loss_history"][-1] < amp["loss_history"][0] - 1.0


def test_one_thread_switches_cpu_threads_only():
    from sparse_expansion.threads import one_thread

    before = torch.get_num_threads()
    with one_thread("cpu"):
        assert torch.get_num_threads() == 1
    with one_thread("cuda:0"):  # nothing to switch for GPU work (no CUDA needed to check)
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before

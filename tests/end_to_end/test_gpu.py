"""The CUDA path, on tiny models: every command's result on the GPU equals its CPU result within
tolerance, and torchrun with NCCL works. Skipped where CUDA is absent (CI); run on a GPU machine
with `pytest -m gpu`."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_expansion.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def logits(folder, device, ids):
    from sparse_expansion.models import load_model

    model, _ = load_model(str(folder), device=device)
    with torch.no_grad():
        return model(ids.to(device)).logits.float().cpu()


@pytest.mark.parametrize("command", [["prune", "--method", "sparsegpt", "--sparsity", "0.5"],
                                     ["prune", "--method", "wanda", "--sparsity", "2:4"],
                                     ["expand", "--experts", "3", "--sparsity", "0.5"]])
def test_compression_on_cuda_equals_cpu(tmp_path, tiny_model_dir, text_file, capsys, command):
    calib = ["--calib", text_file, "--calib-windows", "4", "--seqlen", "32"]
    for device in ("cpu", "cuda"):
        run([command[0], tiny_model_dir, *command[1:], *calib, "--device", device, "--out", tmp_path / device],
            capsys)
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    a, b = logits(tmp_path / "cpu", "cpu", ids), logits(tmp_path / "cuda", "cuda", ids)
    assert torch.allclose(a, b, atol=1e-2, rtol=1e-2)


def test_eval_and_generate_on_cuda_equal_cpu(tiny_model_dir, text_file, capsys):
    results = {}
    for device in ("cpu", "cuda"):
        out = run(["eval", tiny_model_dir, "--data", text_file, "--windows", "3", "--seqlen", "32", "--json",
                   "--device", device], capsys)
        results[device] = json.loads(out)["perplexity"]
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-3)
    texts = {d: run(["generate", tiny_model_dir, "--prompt", "To be", "--max-new-tokens", "6", "--device", d],
                    capsys) for d in ("cpu", "cuda")}
    assert texts["cpu"] == texts["cuda"]


def test_bfloat16_eval_on_cuda(tiny_model_dir, text_file, capsys):
    out = run(["eval", tiny_model_dir, "--data", text_file, "--windows", "3", "--seqlen", "32", "--json",
               "--device", "cuda", "--dtype", "bfloat16"], capsys)
    result = json.loads(out)
    assert result["device"].startswith("cuda") and result["dtype"] == "bfloat16"


def test_experts_on_cuda_as_one_grouped_gemm_equal_one_matmul_per_expert():
    from sparse_expansion.expand.module import grouped_mm_fits, routed_matmul

    g = torch.Generator().manual_seed(0)
    weights = torch.randn(16, 1536, 576, generator=g).to("cuda", torch.bfloat16)  # SmolLM2's up_proj, 16 experts
    x = torch.randn(2048, 576, generator=g).to("cuda", torch.bfloat16)
    labels = torch.randint(0, 16, (2048,), generator=g)
    labels[labels == 5] = 4  # expert 5 gets no token: an empty group
    labels = labels.cuda()
    assert grouped_mm_fits(x, weights)
    grouped = routed_matmul(x, labels, weights, grouped=True)
    looped = routed_matmul(x, labels, weights, grouped=False)
    assert torch.allclose(grouped.float(), looped.float(), rtol=2e-2, atol=0.25)


def test_expanded_eval_on_cuda_equals_cpu(tmp_path, tiny_model_dir, text_file, capsys):
    # On CUDA `eval` holds the experts dense and multiplies them as one grouped GEMM; on the CPU, compressed.
    run(["expand", tiny_model_dir, "--experts", "3", "--sparsity", "0.5", "--calib", text_file, "--calib-windows",
         "4", "--seqlen", "32", "--out", tmp_path / "se"], capsys)
    results = {}
    for device in ("cpu", "cuda"):
        out = run(["eval", tmp_path / "se", "--data", text_file, "--windows", "3", "--seqlen", "32", "--json",
                   "--device", device, "--dtype", "bfloat16"], capsys)
        results[device] = json.loads(out)
    assert results["cuda"]["weights"] == "dense" and results["cpu"]["weights"] == "compressed"
    assert results["cuda"]["perplexity"] == pytest.approx(results["cpu"]["perplexity"], rel=2e-2)


def test_sgatlin_training_on_cuda_tracks_cpu(tmp_path):
    from sparse_expansion.sgatlin.data import TokenData, encode_documents, train_tokenizer
    from sparse_expansion.sgatlin.training import LMTrainConfig, plan, train

    text = "In the beginning God created the heaven and the earth. And the earth was without form. " * 6
    tok = train_tokenizer([text], vocab_size=300)
    stream = encode_documents(tok, {"a": text})[:400]
    data = TokenData(tok, stream, stream.copy())
    cfg = LMTrainConfig(ffn="sgatlin", scale=0.5, budget=1e30, batch_size=4, seq_len=32, lr=3e-3, val_windows=8,
                      ffn_overrides={"n_channels": 4, "d_key": 16}, warmup_steps=2)
    _, fpt, _ = plan(cfg, data.vocab_size)
    cfg.budget = 3 * fpt * 4 * 32 * 10
    cpu = train(cfg, data, tmp_path / "cpu", progress=False, device="cpu")
    gpu = train(cfg, data, tmp_path / "gpu", progress=False, device="cuda")
    assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], abs=0.05)
    amp = train(cfg, data, tmp_path / "amp", progress=False, device="cuda", autocast=torch.bfloat16)
    assert amp["val_loss"] == pytest.approx(cpu["val_loss"], abs=0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_on_cuda_equals_one_process(tmp_path, tiny_model_dir, text_file):
    """NCCL with one rank per GPU: two ranks equal one process where two GPUs exist; on one GPU, one rank
    under torchrun equals a plain process, and two ranks are refused in one line (NCCL cannot put two
    ranks on one GPU)."""
    common = ["expand", str(tiny_model_dir), "--experts", "3", "--sparsity", "0.5", "--calib", str(text_file),
              "--calib-windows", "4", "--seqlen", "32", "--device", "cuda"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    single = subprocess.run([sys.executable, "-m", "sparse_expansion.cli", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))

    def launch(ranks: int, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun, "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
                               "--master-port", str(free_port()), "-m", "sparse_expansion.cli", *common,
                               "--out", str(tmp_path / out)], capture_output=True, text=True, env=env, timeout=600)

    ranks = min(2, torch.cuda.device_count())
    done = launch(ranks, "ranks")
    assert done.returncode == 0, done.stderr[-3000:]
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits(tmp_path / "one", "cuda", ids), logits(tmp_path / "ranks", "cuda", ids), atol=1e-4)
    if torch.cuda.device_count() == 1:
        refused = launch(2, "refused")
        assert refused.returncode != 0 and "NCCL needs one GPU per rank" in refused.stderr
        assert not (tmp_path / "refused").exists()

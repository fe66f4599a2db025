"""sgatlin training: schedule, loss goes down, exact resume, DDP (2 gloo processes) = 1 process."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sparse_expansion.errors import UsageError
from sparse_expansion.sgatlin.data import TokenData, encode_documents, train_tokenizer
from sparse_expansion.sgatlin.training import (
    TrainConfig,
    evaluate,
    load_model,
    lr_at,
    plan,
    train,
)
from sparse_expansion.sgatlin.transformer import Transformer

TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep. And God said, Let there be light: "
    "and there was light. And God saw the light, that it was good: and God divided the light "
    "from the darkness. And God called the light Day, and the darkness he called Night. "
)
SMALL = {"n_channels": 4, "d_key": 16}  # tiny router so a test run takes a second


# Shared machine: more threads than free cores makes tiny ops crawl.
pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(scope="module")
def tiny_data() -> TokenData:
    tok = train_tokenizer([TEXT * 3], vocab_size=300)
    stream = encode_documents(tok, {"a": TEXT * 4})[:400]  # a few hundred tokens
    return TokenData(tok, stream, stream.copy())


def tiny_config(budget_steps: int, data: TokenData, **kw) -> TrainConfig:
    cfg = TrainConfig(ffn="sgatlin", scale=0.5, budget=0, batch_size=4, seq_len=32,
                      lr=3e-3, val_windows=8, ffn_overrides=dict(SMALL), warmup_steps=2, **kw)
    _, fpt, _ = plan(TrainConfig(**{**cfg.to_dict(), "budget": 1e30}), data.vocab_size)
    cfg.budget = 3 * fpt * cfg.batch_size * cfg.seq_len * budget_steps
    return cfg


def test_schedule_shape():
    steps, peak = 100, 1.0
    lrs = [lr_at(s, steps, peak, 10, 0.2) for s in range(steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lrs[10:80])
    assert lrs[80] == 1.0 and lrs[81] == pytest.approx(1 - math.sqrt(1 / 20))
    assert lrs[99] == pytest.approx(1 - math.sqrt(19 / 20))


def test_budget_sets_steps(tiny_data):
    cfg = tiny_config(7, tiny_data)
    _, fpt, steps = plan(cfg, tiny_data.vocab_size)
    assert steps == 7
    cfg.budget = 3 * fpt * 4 * 32 - 1
    with pytest.raises(UsageError, match="no step"):
        plan(cfg, tiny_data.vocab_size)


@pytest.mark.parametrize("ffn", ["sgatlin", "mlp"])
def test_tiny_run_decreases_loss(tiny_data, tmp_path, ffn):
    cfg = tiny_config(30, tiny_data)
    if ffn != "sgatlin":
        cfg.ffn, cfg.ffn_overrides = ffn, {}
        _, fpt, _ = plan(TrainConfig(**{**cfg.to_dict(), "budget": 1e30}), tiny_data.vocab_size)
        cfg.budget = 3 * fpt * 4 * 32 * 30
    mcfg, _, _ = plan(cfg, tiny_data.vocab_size)
    torch.manual_seed(cfg.seed)
    from sparse_expansion.sgatlin.data import val_windows

    windows = val_windows(tiny_data.val, 8, 32)
    before = evaluate(Transformer(mcfg), windows)
    metrics = train(cfg, tiny_data, tmp_path, progress=False)
    assert metrics["steps"] == 30 and metrics["tokens"] == 30 * 128
    assert metrics["val_loss"] < before - 1.0, (before, metrics["val_loss"])
    # the saved run reloads to the same function
    model = load_model(tmp_path)
    assert evaluate(model, windows) == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert (tmp_path / "tokenizer.json").is_file()
    for key in ("ffn", "scale", "params", "flops_per_token", "budget", "steps", "tokens",
                "train_loss", "val_loss", "wall_seconds"):
        assert key in metrics


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    cfg = tiny_config(10, tiny_data)
    full = train(cfg, tiny_data, tmp_path / "full", progress=False)
    ckpt = tmp_path / "run.ckpt"
    assert train(cfg, tiny_data, None, ckpt, checkpoint_every=3, stop_after=4,
                 progress=False) is None
    resumed = train(cfg, tiny_data, tmp_path / "resumed", ckpt, checkpoint_every=3,
                    resume=True, progress=False)
    assert resumed["loss_history"] == full["loss_history"]
    a = load_model(tmp_path / "full").state_dict()
    b = load_model(tmp_path / "resumed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tiny_config(11, tiny_data)
    with pytest.raises(UsageError, match="different config"):
        train(other, tiny_data, None, ckpt, resume=True, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, data: TokenData,
                out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        train(cfg, data, Path(out) if rank == 0 else None, progress=False)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one(tiny_data, tmp_path):
    cfg = tiny_config(6, tiny_data)
    data = TokenData(tiny_data.tokenizer, np.asarray(tiny_data.train), np.asarray(tiny_data.val))
    single = train(cfg, data, tmp_path / "one", progress=False)
    (tmp_path / "two").mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg, data, str(tmp_path / "two")), nprocs=2,
             join=True)
    from sparse_expansion.io import read_json

    double = read_json(tmp_path / "two" / "metrics.json")
    assert double["world_size"] == 2 and single["world_size"] == 1
    np.testing.assert_allclose(double["loss_history"], single["loss_history"], rtol=1e-5)
    a = load_model(tmp_path / "one").state_dict()
    b = load_model(tmp_path / "two").state_dict()
    for k in a:
        # Adam divides by √v, which magnifies summation-order noise on tiny gradients a little
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)

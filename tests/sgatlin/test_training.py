"""sgatlin training: schedule, loss goes down, the saved run reloads to the same function, exact
resume, atomic and checked checkpoints, DDP (2 gloo processes) = 1 process."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import free_port, sgatlin_ddp_worker

from sparse_expansion.artifact import load_artifact, read_manifest
from sparse_expansion.errors import UsageError
from sparse_expansion.sgatlin.checkpoint import complete_checkpoints, load_checkpoint
from sparse_expansion.sgatlin.data import TokenData, encode_documents, train_tokenizer, val_windows
from sparse_expansion.sgatlin.training import (
    LMTrainConfig,
    check_config,
    evaluate,
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
SMALL = {"n_channels": 4, "d_key": 16}  # a tiny router keeps a test run small

# Shared machine: more threads than free cores makes tiny ops crawl.
pytestmark = pytest.mark.usefixtures("single_thread")


def load(folder: Path) -> Transformer:
    model, _ = load_artifact(folder)
    assert isinstance(model, Transformer)
    return model


@pytest.fixture(scope="module")
def tiny_data() -> TokenData:
    tok = train_tokenizer([TEXT * 3], vocab_size=300)
    stream = encode_documents(tok, {"a": TEXT * 4})[:400]  # a few hundred tokens
    return TokenData(tok, stream, stream.copy())


def tiny_config(budget_steps: int, data: TokenData, **kw) -> LMTrainConfig:
    cfg = LMTrainConfig(ffn="sgatlin", scale=0.5, budget=0, batch_size=4, seq_len=32,
                      lr=3e-3, val_windows=8, ffn_overrides=dict(SMALL), warmup_steps=2, **kw)
    _, fpt, _ = plan(LMTrainConfig(**{**cfg.to_dict(), "budget": 1e30}), data.vocab_size)
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


@pytest.mark.parametrize("change,message", [
    ({"budget": float("nan")}, "--budget must be a positive"),
    ({"budget": -1.0}, "--budget must be a positive"),
    ({"scale": 0.0}, "--scale must be a positive"),
    ({"scale": 0.7}, "multiple of 0.5"),
    ({"lr": 0.0}, "--lr must be a positive"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"seq_len": 0}, "--seq-len must be at least 1"),
    ({"ffn_overrides": {"activation": "nope"}}, "unknown activation"),
    ({"ffn_overrides": {"d_ffw": 3}}, "do not apply to ffn 'sgatlin'"),
])
def test_check_config_refuses_without_data(change, message):
    cfg = LMTrainConfig(**{**LMTrainConfig(ffn="sgatlin", scale=0.5, budget=1e12).to_dict(), **change})
    with pytest.raises(UsageError, match=message):
        check_config(cfg)


def test_check_config_steps_do_not_depend_on_the_vocabulary(tiny_data):
    cfg = tiny_config(7, tiny_data)
    assert check_config(cfg) == plan(cfg, tiny_data.vocab_size)[2] == plan(cfg, 50_000)[2] == 7
    with pytest.raises(UsageError, match="divisible by 3 processes"):
        check_config(cfg, world=3)


@pytest.mark.parametrize("ffn", ["sgatlin", "mlp"])
def test_tiny_run_decreases_loss(tiny_data, tmp_path, ffn):
    cfg = tiny_config(30, tiny_data)
    if ffn != "sgatlin":
        cfg.ffn, cfg.ffn_overrides = ffn, {}
        _, fpt, _ = plan(LMTrainConfig(**{**cfg.to_dict(), "budget": 1e30}), tiny_data.vocab_size)
        cfg.budget = 3 * fpt * 4 * 32 * 30
    mcfg, fpt, _ = plan(cfg, tiny_data.vocab_size)
    torch.manual_seed(cfg.seed)
    windows = val_windows(tiny_data.val, 8, 32)
    untrained = Transformer(mcfg)
    before = evaluate(untrained, windows)
    assert before == pytest.approx(math.log(tiny_data.vocab_size), abs=0.5)  # near-uniform start
    metrics = train(cfg, tiny_data, tmp_path, progress=False)
    assert metrics["steps"] == 30 and metrics["tokens"] == 30 * 128
    assert metrics["train_flops"] == 3 * fpt * 128 * 30 <= cfg.budget
    assert metrics["params"] == sum(p.numel() for p in untrained.parameters())
    # 30 steps on a few hundred tokens: validation loss falls by more than one nat
    assert metrics["val_loss"] < before - 1.0, (before, metrics["val_loss"])
    history = metrics["loss_history"]
    assert len(history) == 30 and np.mean(history[-5:]) < np.mean(history[:5]) - 1.0
    assert metrics["train_loss"] == pytest.approx(np.mean(history[-3:]))


def test_saved_run_reloads_to_identical_logits(tiny_data, tmp_path):
    cfg = tiny_config(5, tiny_data)
    metrics = train(cfg, tiny_data, tmp_path, progress=False)
    manifest = read_manifest(tmp_path)
    assert manifest["kind"] == "sgatlin_lm" and manifest["spec"] == metrics["model"]
    assert manifest["record"]["val_loss"] == metrics["val_loss"]
    model, tokenizer = load_artifact(tmp_path)
    assert tokenizer.get_vocab() == tiny_data.tokenizer.get_vocab()
    windows = val_windows(tiny_data.val, 8, 32)
    assert evaluate(model, windows) == metrics["val_loss"]  # the very function that was trained
    tokens = windows[:2, :-1]
    untrained = Transformer.from_spec(manifest["spec"])
    with torch.no_grad():
        assert not torch.equal(model(tokens), untrained(tokens))
        assert torch.equal(model(tokens), load(tmp_path)(tokens))  # reloading is exact


def test_saved_run_loads_through_models_load_model(tiny_data, tmp_path):
    from sparse_expansion.models import load_model

    train(tiny_config(3, tiny_data), tiny_data, tmp_path, progress=False)
    model, tokenizer = load_model(str(tmp_path))
    tokens = val_windows(tiny_data.val, 2, 32)[:, :-1]
    with torch.no_grad():
        assert torch.equal(model(tokens), load(tmp_path)(tokens))
    assert tokenizer.get_vocab() == tiny_data.tokenizer.get_vocab()


def test_resume_reproduces_uninterrupted_run(tiny_data, tmp_path):
    cfg = tiny_config(10, tiny_data)
    full = train(cfg, tiny_data, tmp_path / "full", progress=False)
    ckpt = tmp_path / "run.ckpt"
    assert train(cfg, tiny_data, None, ckpt, checkpoint_every=3, stop_after=4,
                 progress=False) is None
    # one complete checkpoint remains (step 3 was replaced by the final one at step 4)
    assert [p.name for p in complete_checkpoints(ckpt)] == ["step-000000004"]
    assert load_checkpoint(ckpt).history == full["loss_history"][:4]
    resumed = train(cfg, tiny_data, tmp_path / "resumed", ckpt, checkpoint_every=3,
                    resume=True, progress=False)
    assert resumed["loss_history"] == full["loss_history"]
    assert resumed["val_loss"] == full["val_loss"]
    a = load(tmp_path / "full").state_dict()
    b = load(tmp_path / "resumed").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tiny_config(11, tiny_data)
    with pytest.raises(UsageError, match="different config .*budget"):
        train(other, tiny_data, None, ckpt, resume=True, progress=False)


def test_checkpoint_write_is_atomic(tiny_data, tmp_path, monkeypatch):
    """A run killed while writing a checkpoint leaves the previous one whole and resumable."""
    import sparse_expansion.sgatlin.checkpoint as checkpoint

    cfg = tiny_config(6, tiny_data)
    ckpt = tmp_path / "run.ckpt"
    train(cfg, tiny_data, None, ckpt, checkpoint_every=2, stop_after=2, progress=False)
    real = checkpoint.write_json

    def dies_on_state(path, obj):
        if Path(path).name == "state.json":
            raise KeyboardInterrupt  # as if killed between the weights and the state
        real(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", dies_on_state)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data, None, ckpt, checkpoint_every=2, resume=True, progress=False)
    monkeypatch.setattr(checkpoint, "write_json", real)
    assert [p.name for p in complete_checkpoints(ckpt)] == ["step-000000002"]
    assert list(ckpt.glob(".step-000000004.tmp"))  # the half-written one, hidden
    full = train(cfg, tiny_data, None, progress=False)
    resumed = train(cfg, tiny_data, None, ckpt, checkpoint_every=2, resume=True, progress=False)
    assert resumed["loss_history"] == full["loss_history"]
    assert not list(ckpt.glob(".step-*.tmp"))  # cleaned by the next write


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _misshapen_moment(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    tensors["0.exp_avg"] = tensors["0.exp_avg"][:1]
    save_file(tensors, str(path))


CORRUPTIONS = {
    "truncated model": ("model.safetensors", _truncate, "cannot load"),
    "truncated optimizer": ("optimizer.safetensors", _truncate, "optimizer.safetensors"),
    "misshapen moment": ("optimizer.safetensors", _misshapen_moment, "misshapen"),
    "garbage optimizer.json": ("optimizer.json", lambda p: p.write_text("{"), "not valid JSON"),
    "no state": ("state.json", lambda p: p.unlink(), "state.json is missing"),
    "bad history": ("state.json", lambda p: p.write_text('{"step": 2, "history": [1.0], '
                                                         '"wall_seconds": 1, "train_config": {}}'),
                    "loss history"),
    "no manifest": ("sparse_expansion.json", lambda p: p.unlink(), "sparse_expansion.json"),
}


@pytest.fixture(scope="module")
def good_checkpoint(tiny_data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("good") / "run.ckpt"
    train(tiny_config(4, tiny_data), tiny_data, None, ckpt, stop_after=2, progress=False)
    return ckpt


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_corrupt_checkpoint_is_a_usage_error(tiny_data, tmp_path, good_checkpoint, what):
    import shutil

    file, damage, message = CORRUPTIONS[what]
    ckpt = tmp_path / "run.ckpt"
    shutil.copytree(good_checkpoint, ckpt)
    damage(complete_checkpoints(ckpt)[-1] / file)
    with pytest.raises(UsageError, match=message) as info:
        train(tiny_config(4, tiny_data), tiny_data, None, ckpt, resume=True, progress=False)
    assert "\n" not in str(info.value)


def test_nothing_to_resume(tiny_data, tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        train(tiny_config(4, tiny_data), tiny_data, None, tmp_path / "none.ckpt", resume=True,
              progress=False)
    old = tmp_path / "old.ckpt"  # the flat layout of earlier versions
    old.mkdir()
    (old / "state.json").write_text("{}")
    with pytest.raises(UsageError, match="older sparse-expansion"):
        train(tiny_config(4, tiny_data), tiny_data, None, old, resume=True, progress=False)


def test_ddp_two_processes_equal_one(tiny_data, tmp_path):
    cfg = tiny_config(6, tiny_data)
    data = TokenData(tiny_data.tokenizer, np.asarray(tiny_data.train), np.asarray(tiny_data.val))
    single = train(cfg, data, tmp_path / "one", progress=False)
    (tmp_path / "two").mkdir()
    mp.spawn(sgatlin_ddp_worker, args=(2, free_port(), cfg, data, str(tmp_path / "two")), nprocs=2,
             join=True)
    from sparse_expansion.io import read_json

    double = read_json(tmp_path / "two" / "metrics.json")
    assert double["world_size"] == 2 and single["world_size"] == 1
    np.testing.assert_allclose(double["loss_history"], single["loss_history"], rtol=1e-5)
    a = load(tmp_path / "one").state_dict()
    b = load(tmp_path / "two").state_dict()
    for k in a:
        # Adam divides by √v, which magnifies summation-order noise on tiny gradients a little
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)

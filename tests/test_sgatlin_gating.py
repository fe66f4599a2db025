"""sgatlin gating: recording matches the routers, patching is exact and causal, stats are sane."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_expansion.errors import UsageError
from sparse_expansion.sgatlin.gating import (
    causal_patching,
    coactivation,
    gating_matrix,
    patch_routing,
    record,
    record_routing,
    usage_stats,
)
from sparse_expansion.sgatlin.transformer import Transformer, config_for_scale

# Shared machine: more threads than free cores makes tiny ops crawl.
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def model() -> Transformer:
    torch.manual_seed(0)
    cfg = config_for_scale("sgatlin", 1, vocab_size=40, seq_len=16, n_neurons=49, k=3,
                           n_channels=2, d_key=8)
    return Transformer(cfg).eval()


def test_record_matches_router_outputs(model):
    windows = torch.randint(0, 40, (3, 16))
    seen = []
    handle = model.blocks[1].ffn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0]))
    rec = record(model, windows)
    handle.remove()
    assert rec.indices.shape == rec.scores.shape == (2, 48, 2, 3)
    with torch.no_grad():
        s, i = model.blocks[1].ffn.router(seen[0])
    assert np.array_equal(rec.indices[1], i.flatten(0, 1).numpy())
    np.testing.assert_allclose(rec.scores[1], s.flatten(0, 1).numpy(), rtol=1e-6)
    # hooks are gone afterwards
    assert all(not b.ffn.router._forward_hooks for b in model.blocks)
    stats = usage_stats(rec)
    assert all(0 < st["fraction_used"] <= 1 and 0 < st["normalized_entropy"] <= 1 for st in stats)
    g = gating_matrix(rec)
    assert g.shape == (48, 2 * 2 * 49) and g.nnz == 48 * 2 * 2 * 3
    co, neurons = coactivation(rec, top=5)
    assert co.shape == (5, 5) and np.allclose(np.diag(co), 1.0)


@torch.no_grad()
def test_patching_own_routing_is_identity_and_patch_is_causal(model):
    clean = torch.randint(0, 40, (1, 16))
    other = clean.clone()
    other[0, 9] = (other[0, 9] + 1) % 40
    with record_routing(model) as own:
        base = model(clean)
    with patch_routing(model, 9, [layer[0] for layer in own]):
        assert torch.equal(model(clean), base)
    with record_routing(model) as cf:
        model(other)
    with patch_routing(model, 9, [layer[0] for layer in cf]):
        patched = model(clean)
    assert torch.equal(patched[:, :9], base[:, :9])  # earlier positions cannot see the patch
    assert not torch.allclose(patched[:, 9], base[:, 9])
    assert all(not b.ffn.router._forward_hooks for b in model.blocks)


def test_causal_patching_reports_fractions(model):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 40, 600)
    stream[::7] = 5  # subject 5 is always followed by answer 6, subject 7 by answer 8
    stream[1::7] = 6
    stream[3::7] = 7
    stream[4::7] = 8
    out = causal_patching(model, stream, [(5, 6, 1.0, 80), (7, 8, 1.0, 80)], context=12)
    s = out["summary"]
    assert s["prompts"] == 6 and len(out["rows"]) == 6
    for r in out["rows"]:
        assert len(r["ld_patched_per_layer"]) == 2 and r["prompt"][-1] == r["subject"]
        assert r["ld_control"] is not None  # every subject has a sibling context here


def test_gating_refuses_non_sgatlin_models():
    model = Transformer(config_for_scale("mlp", 0.5, vocab_size=20, seq_len=8))
    with pytest.raises(UsageError, match="sgatlin"):
        record(model, torch.zeros(1, 8, dtype=torch.long))

"""sgatlin gating: recordings name the neurons the routers chose, measures are exact on hand-built
recordings, patching is exact and causal, and the whole look runs on a trained run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse_expansion.errors import UsageError
from sparse_expansion.sgatlin.gating.causal import causal_patching, logit_differences, summarize
from sparse_expansion.sgatlin.gating.measure import (
    coactivation,
    gating_matrix,
    nearest_contexts,
    usage_stats,
)
from sparse_expansion.sgatlin.gating.record import (
    Recording,
    patch_routing,
    record,
    record_routing,
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


def test_record_names_the_neurons_each_router_chose(model):
    windows = torch.randint(0, 40, (3, 16))
    inputs: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    handles = [b.ffn.register_forward_pre_hook(lambda _m, inp, i=i: inputs[i].append(inp[0]))
               for i, b in enumerate(model.blocks)]
    rec = record(model, windows)
    for h in handles:
        h.remove()
    assert rec.indices.shape == rec.scores.shape == (2, 48, 2, 3)
    assert rec.tokens.tolist() == windows.flatten().tolist() and rec.window == 16
    for layer, block in enumerate(model.blocks):
        with torch.no_grad():
            scores, indices = block.ffn.router(inputs[layer][0])  # the router, called directly
        assert np.array_equal(rec.indices[layer], indices.flatten(0, 1).numpy())
        assert np.array_equal(rec.scores[layer], scores.flatten(0, 1).numpy())
    assert all(not b.ffn.router._forward_hooks for b in model.blocks)  # hooks are gone


def hand_recording() -> Recording:
    """1 layer, 4 tokens in windows of 2, 2 channels, k = 1, N = 4 neurons."""
    indices = np.array([[[[0], [0]], [[0], [1]], [[1], [2]], [[1], [3]]]], dtype=np.int32)
    scores = np.array([[[[1.0], [2.0]], [[-1.0], [2.0]], [[3.0], [-2.0]], [[1.0], [4.0]]]])
    return Recording(np.array([10, 11, 12, 13]), 2, scores, indices, 4)


def test_usage_stats_exact():
    (st,) = usage_stats(hand_recording())
    # channel 0 uses neurons 0, 0, 1, 1: half the pool, entropy ln 2 / ln 4; channel 1 all four once
    assert st["fraction_used"] == 0.75 and st["min_fraction_used"] == 0.5
    assert st["normalized_entropy"] == pytest.approx((math.log(2) / math.log(4) + 1) / 2)
    assert st["mean_score"] == pytest.approx(10 / 8) and st["fraction_negative_scores"] == 0.25


def test_gating_matrix_and_coactivation_exact():
    g = gating_matrix(hand_recording()).toarray()
    expected = np.zeros((4, 8))
    expected[0, [0, 4]] = [1, 2]  # column = channel * N + neuron
    expected[1, [0, 5]] = [-1, 2]
    expected[2, [1, 6]] = [3, -2]
    expected[3, [1, 7]] = [1, 4]
    assert np.array_equal(g, expected)
    co, neurons = coactivation(hand_recording(), channel=1, top=2)
    assert sorted(neurons.tolist()) == [0, 1] and np.array_equal(co, np.eye(2))  # never together


class Digits:
    """A tokenizer stand-in: token t decodes to ' t'."""

    def decode(self, ids):
        return "".join(f" {i}" for i in ids)


def test_nearest_context_is_the_identical_pattern_in_another_window():
    rec = hand_recording()
    rec.indices[0, 2] = rec.indices[0, 0]  # token 2 (window 1) gates exactly like token 0
    rec.scores[0, 2] = 2 * rec.scores[0, 0]
    (near,) = nearest_contexts(rec, Digits(), [0], top=2)
    assert near["neighbours"][0]["token"] == 2
    assert near["neighbours"][0]["cosine"] == pytest.approx(1.0)
    assert all(nb["token"] in (2, 3) for nb in near["neighbours"])  # never its own window
    assert near["text"] == "[[ 10]] 11"


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


def test_patching_with_the_same_prompt_has_zero_effect(model):
    clean = torch.randint(0, 40, (1, 12))
    same = logit_differences(model, clean, clean.clone(), 6, 8, 11)
    assert same["ld_patched"] == same["ld_clean"] == same["ld_counterfactual"]
    assert same["ld_patched_per_layer"] == [same["ld_clean"]] * 2
    other = clean.clone()
    other[0, 11] = (other[0, 11] + 1) % 40
    moved = logit_differences(model, clean, other, 6, 8, 11)
    assert moved["ld_clean"] == same["ld_clean"]
    assert moved["ld_patched"] != moved["ld_clean"]  # the routing at the subject matters


def test_causal_patching_rows_are_the_models_logit_differences(model):
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 40, 600)
    stream[::7] = 5  # subject 5 is always followed by answer 6, subject 7 by answer 8
    stream[1::7] = 6
    stream[3::7] = 7
    stream[4::7] = 8
    out = causal_patching(model, stream, [(5, 6, 1.0, 80), (7, 8, 1.0, 80)], context=12)
    assert out["summary"]["prompts"] == 6 and len(out["rows"]) == 6
    for r in out["rows"]:
        prompt = torch.tensor([r["prompt"]])
        assert prompt[0, -1] == r["subject"] and len(r["ld_patched_per_layer"]) == 2
        with torch.no_grad():
            logits = model(prompt)[0, -1]
        assert r["ld_clean"] == float(logits[r["answer"]] - logits[r["cf_answer"]])
        assert r["ld_control"] is not None  # every subject has a sibling context here


def test_summary_fractions_exact():
    rows = [{"ld_clean": 2.0, "ld_counterfactual": -2.0, "ld_patched": 0.0,
             "ld_patched_per_layer": [1.0, 2.0], "ld_control": 2.0},
            {"ld_clean": 1.0, "ld_counterfactual": -1.0, "ld_patched": -1.0,
             "ld_patched_per_layer": [0.0, 1.0], "ld_control": None},
            {"ld_clean": 0.1, "ld_counterfactual": 0.2, "ld_patched": 0.1,
             "ld_patched_per_layer": [0.1, 0.1], "ld_control": None}]  # not known, no effect
    s = summarize(rows, 2)
    assert (s["prompts"], s["known"], s["effect_prompts"]) == (3, 2, 2)
    assert s["fraction_moved_all_layers"] == 0.75  # mean of 2/4 and 2/2
    assert s["fraction_moved_per_layer"] == [0.375, 0.0]  # mean of 1/4 and 1/2; of 0 and 0
    assert s["fraction_moved_control"] == 0.0 and s["fraction_flipped"] == 0.5
    assert s["pooled_fraction_moved"] == 4 / 6 and s["pooled_fraction_moved_control"] == 0.0


def test_gating_refuses_non_sgatlin_models():
    model = Transformer(config_for_scale("mlp", 0.5, vocab_size=20, seq_len=8))
    with pytest.raises(UsageError, match="sgatlin"):
        record(model, torch.zeros(1, 8, dtype=torch.long))

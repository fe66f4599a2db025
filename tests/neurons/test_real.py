"""One check on the shipped SmolLM2-135M: every gate neuron gets a finite WD, and some stand out."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.real_model
def test_smollm2_neurons_have_finite_wd_and_outliers():
    from sparse_expansion.arch import decoder_layers
    from sparse_expansion.data import corpus_tokens, evaluation_windows
    from sparse_expansion.metrics.wasserstein import gaussian_noise_floor, wasserstein_to_gaussian
    from sparse_expansion.models import load_model
    from sparse_expansion.neurons.collect import iter_layer_inputs, projection_outputs

    model, tokenizer = load_model("smollm2-135m")
    windows = evaluation_windows(corpus_tokens("shakespeare:test", tokenizer), 128, 2)
    inputs = dict(iter_layer_inputs(model, windows, [0, 3], 256, progress=False))
    floor = gaussian_noise_floor(256)
    for i, x in inputs.items():
        wd = wasserstein_to_gaussian(projection_outputs(decoder_layers(model)[i].mlp.gate_proj, x))
        assert wd.shape == (1536,) and torch.isfinite(wd).all()
        assert wd.max() > 4 * floor  # a few neurons are far from Gaussian

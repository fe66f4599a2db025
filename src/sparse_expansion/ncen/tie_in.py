"""Tie-in: are Sparse Expansion experts, or FPE children, "negatively correlated members"?

The same two questions NCEn asks of its members, asked of other groups of siblings:
1. gradient cosine: the mean, over sibling pairs (a, b) and inputs x, of cos(∇ₓf_a, ∇ₓf_b);
2. first-order transfer: a perturbation δ_a = ε·sign(∇ₓf_a) is the L∞-optimal first-order way to
   move member a. How far does it move member b, relative to b's own optimal δ_b?
   ratio(a→b) = (∇ₓf_b · δ_a) / (∇ₓf_b · δ_b) = sign(∇ₓf_a)·∇ₓf_b / ‖∇ₓf_b‖₁ ∈ [-1, 1], independent
   of ε to first order. 1: a's attack moves b as much as b's own; 0: not at all; < 0: the other way.

Members and the scalar f:
- **Sparse Expansion experts** of one expanded linear (gate_proj, up_proj, down_proj): member e
  maps the linear's input x to W_e x (the router ignored: we ask whether the experts *could* be
  attacked together, not which one a token meets). f_e(x) = rᵀW_e x for a random unit vector r
  shared by all experts, averaged over `projections` draws of r: a random projection weighs
  every output alike, and unlike ‖W_e x‖ it gives independent random matrices a cosine of ≈ 0
  (the output norm's gradient W_eᵀW_e x ≈ c·x points along x for any matrix). The experts are
  linear, so ∇ₓf_e = W_eᵀr does not depend on x. References: each expert against the dense
  weight it was pruned from, and K independent Gaussian matrices of the same shape.
- **FPE children**: the α children of one parent neuron in a trained FPE network (digits, two
  hidden layers, FPE at both); f = the child's pre-activation as a function of the network's
  input. Layer-0 children have disjoint input masks, so their gradients are orthogonal by
  construction (cosine and transfer exactly 0); layer-1 children reach the input through layer
  0, so theirs is a measurement. Control: random non-sibling pairs of the same layer.
- **NCEn / independent members** (from the main study): the members' CE input gradients on
  the test set, the same two numbers, for comparison.
"""

from __future__ import annotations

import time

import torch

from . import losses


def sibling_stats(grads: torch.Tensor, pairs: torch.Tensor | None = None) -> dict[str, float]:
    """grads (K, N, D): members' input gradients on N inputs. Mean cosine and first-order transfer
    ratio over the given member pairs (P, 2) (default: all pairs), both directions, all inputs."""
    k = grads.shape[0]
    if pairs is None:
        i, j = losses.pair_indices(k)
        pairs = torch.stack([i, j], dim=1)
    a, b = grads[pairs[:, 0]], grads[pairs[:, 1]]  # (P, N, D)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    transfer = losses.first_order_transfer(grads, pairs)
    return {"gradient_cosine": float(cos.mean()), "transfer_ratio": float(transfer), "pairs": int(len(pairs))}


def linear_expert_grads(experts: torch.Tensor, projections: int, seed: int) -> torch.Tensor:
    """(K, R, in): ∇ₓ rᵀW_e x = W_eᵀr for R random unit vectors r (one 'input' per r)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(projections, experts.shape[1], generator=gen, dtype=experts.dtype)
    r = r / r.norm(dim=1, keepdim=True)
    return torch.einsum("koi,ro->kri", experts, r)


def expert_stats(experts: torch.Tensor, dense: torch.Tensor, projections: int = 64, seed: int = 0) -> dict:
    """Cosine/transfer among the experts, experts vs their dense parent, and a random control."""
    experts = experts.detach().double()
    dense = dense.detach().double()
    g = linear_expert_grads(experts, projections, seed)
    gd = linear_expert_grads(dense.unsqueeze(0), projections, seed)
    k = experts.shape[0]
    vs_dense = [sibling_stats(torch.stack([gd[0], g[e]])) for e in range(k)]
    gen = torch.Generator().manual_seed(seed + 1)
    rand = torch.randn(k, *dense.shape, generator=gen, dtype=torch.float64)
    masks = (experts != 0).flatten(1).double()  # (K, out·in)
    i, j = losses.pair_indices(k)
    inter = (masks[i] * masks[j]).sum(1)
    union = masks[i].sum(1) + masks[j].sum(1) - inter
    density = float(masks.mean())
    return {
        "experts": k,
        "shape": list(dense.shape),
        "expert_density": density,
        # kept-weight overlap between experts (Jaccard), and what independent random masks would give
        "mask_jaccard": float((inter / union.clamp_min(1)).mean()),
        "mask_jaccard_random": density / (2 - density) if density < 1 else 1.0,
        "among_experts": sibling_stats(g),
        "expert_vs_dense": {
            "gradient_cosine": sum(v["gradient_cosine"] for v in vs_dense) / k,
            "transfer_ratio": sum(v["transfer_ratio"] for v in vs_dense) / k,
        },
        "random_matrices": sibling_stats(linear_expert_grads(rand, projections, seed)),
    }


def tiny_llama(seed: int = 0):
    """A tiny random Llama (2 layers, hidden 32, MLP 64), weights N(0, 0.2) as in the tests."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def expand_and_measure(model, windows: torch.Tensor, layer: int, experts: int, sparsity: str,
                       projections: int = 64, seed: int = 0) -> dict:
    """Expand decoder layers 0..layer of `model` in place (Sparse Expansion through the engine) and
    measure the experts of every expanded linear of `layer`."""
    from ..arch import decoder_layers
    from ..engine import calibrate
    from ..expand import ExpandCompressor, ExpandConfig, SparseExpertLinear
    from ..prune import parse_sparsity

    layers = decoder_layers(model)
    del layers[layer + 1 :]  # only what the measured layer needs is expanded
    block = layers[layer]
    dense = {name: mod.weight.detach().clone() for name, mod in block.named_modules()
             if isinstance(mod, torch.nn.Linear) and "mlp" in name}
    comp = ExpandCompressor(ExpandConfig(experts=experts, sparsity=parse_sparsity(sparsity)))
    t0 = time.perf_counter()
    calibrate(model, windows, comp, batch_size=4, progress=False)
    seconds = time.perf_counter() - t0
    out = {"layer": layer, "experts": experts, "sparsity": sparsity, "expand_seconds": seconds, "linears": {}}
    for name, mod in block.named_modules():
        if isinstance(mod, SparseExpertLinear) and name in dense:
            out["linears"][name] = expert_stats(mod.dense_experts(), dense[name], projections, seed)
    return out


def tiny_expert_study(experts: int = 16, sparsity: str = "0.5", seed: int = 0) -> dict:
    """Sparse Expansion of a tiny random Llama (random token windows), layer 1."""
    model = tiny_llama(seed)
    windows = torch.randint(2, 128, (16, 32), generator=torch.Generator().manual_seed(seed))
    out = expand_and_measure(model, windows, layer=1, experts=experts, sparsity=sparsity, seed=seed)
    out["model"] = "tiny random Llama (hidden 32, MLP 64), 16 random-token windows of 32"
    return out


def smollm2_layers() -> int:
    """Decoder layers of the shipped SmolLM2-135M, from its config (converted once into the cache), so
    `--tie-in-layer` is refused before the study trains rather than after."""
    import json

    from ..models import shipped_model_dir

    return int(json.loads((shipped_model_dir() / "config.json").read_text())["num_hidden_layers"])


def smollm2_expert_study(layer: int = 0, experts: int = 16, sparsity: str = "0.7", windows: int = 16,
                         seqlen: int = 256, seed: int = 0) -> dict:
    """Sparse Expansion of the shipped SmolLM2-135M (de-quantized Q4_1), layers 0..layer, calibrated on
    Shakespeare training plays; measures layer `layer`."""
    from ..data import calibration_windows, corpus_tokens
    from ..models import load_model

    model, tok = load_model("smollm2-135m")
    win = calibration_windows(corpus_tokens("shakespeare:train", tok), n=windows, seqlen=seqlen, seed=seed)
    out = expand_and_measure(model, win, layer=layer, experts=experts, sparsity=sparsity, seed=seed)
    out["model"] = (f"SmolLM2-135M (de-quantized Q4_1), layer {layer}; {windows} calibration windows of "
                    f"{seqlen} tokens from shakespeare:train")
    return out


def neuron_input_grads(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """(H, N, D): input gradients of every pre-activation of hidden `layer` of an FPE MaskedMLP."""
    x = x.detach().clone().requires_grad_(True)
    h = x
    for i, lin in enumerate(model.layers[: layer + 1]):
        h = lin(h)
        if i < layer:
            h = torch.relu(h)
    grads = [torch.autograd.grad(h[:, n].sum(), x, retain_graph=True)[0] for n in range(h.shape[1])]
    return torch.stack(grads)


def fpe_children_study(hidden: int = 16, alpha: int = 2, seed: int = 0, examples: int = 200) -> dict:
    """Train FPE on digits (two hidden layers, random split at both) with FPE's own schedule and
    measure sibling children against random non-sibling pairs."""
    from ..fpe.embeddings import load_task, train_test_split
    from ..fpe.mlp import MLPConfig, MLPTrainConfig
    from ..fpe.schedule import schedule

    x, y, _ = load_task("digits")
    data = train_test_split(x, y, seed=0)
    runs = schedule(MLPConfig(x.shape[1], (hidden, hidden), 10), data, ["random"], alpha, seed, 20, 40,
                    MLPTrainConfig(), keep_models=True)
    fpe = next(r for r in runs if r["rule"] == "random")
    net = fpe["_model"]
    xs = data[2][:examples]
    gen = torch.Generator().manual_seed(seed)
    out = {"hidden_parent": hidden, "alpha": alpha, "test_accuracy": fpe["test_accuracy"], "layers": {}}
    for layer in range(2):
        grads = neuron_input_grads(net, xs, layer)
        width = grads.shape[0]
        live = grads.flatten(1).abs().sum(1) > 0  # a pruned-away child has no gradient
        sib = torch.tensor([(p * alpha + a, p * alpha + b) for p in range(width // alpha)
                            for a in range(alpha) for b in range(a + 1, alpha)])
        sib = sib[live[sib[:, 0]] & live[sib[:, 1]]]
        alive = torch.nonzero(live).flatten()
        rnd = alive[torch.randint(len(alive), (4 * len(sib), 2), generator=gen)]
        rnd = rnd[(rnd[:, 0] // alpha) != (rnd[:, 1] // alpha)]
        out["layers"][str(layer)] = {"siblings": sibling_stats(grads, sib), "non_siblings": sibling_stats(grads, rnd)}
    return out

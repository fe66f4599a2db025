"""Perplexity over windows, and honest per-token cost: FLOPs and stored non-zeros.

FLOPs per token count the weight matmuls a token goes through: 2 x non-zeros of every linear in
the decoder layers plus the LM head, or, for a replacement module (e.g. a sparse expert layer),
that module's own count (one expert plus its router); a part two modules share (gate_proj's and
up_proj's one router) is counted once. Attention scores (which grow with the
context) and embedding lookups are left out, the same way for every model. A mixture of experts
(moe.py) counts its router and the top-k experts a token goes through (k times the mean expert).

The LM head is a full matmul per token: with Gemma 3's 262k vocabulary it is most of a small
model's FLOPs per token (README, "Gemma 3 270M"), and compressing the MLPs does not touch it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .arch import architecture_of, decoder_layers, is_linear_like, linear_weight
from .moe import experts_cost, is_fused_experts
from .progress import progress_bar


class _Cost:
    """A fixed (FLOPs per token, non-zeros) pair, for parts that are not linears (MoE experts, routers)."""

    def __init__(self, flops: int, nonzeros: int) -> None:
        self._flops, self._nonzeros = flops, nonzeros

    def flops_per_token(self) -> int:
        return self._flops

    def nonzeros(self) -> int:
        return self._nonzeros


def _top_k(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "num_experts_per_tok", 1))


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4,
               device: str = "cpu", progress: bool = True) -> dict[str, float]:
    """exp(mean next-token NLL) over all predicted tokens of the windows (seqlen - 1 per window)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    batches = range(0, windows.shape[0], batch_size)
    for start in progress_bar(batches, desc="eval", unit="batch", disable=not progress):
        ids = windows[start : start + batch_size].to(device)
        logits = model(ids, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                              reduction="sum")
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return {"perplexity": math.exp(mean), "nll": mean, "tokens": total_tokens}


def _cost_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight-matmul module a token passes through: decoder-layer linears and the head."""
    out: dict[str, nn.Module] = {}
    for i, layer in enumerate(decoder_layers(model)):
        replaced: list[str] = []
        for name, module in layer.named_modules():
            if any(name.startswith(prefix + ".") for prefix in replaced):
                continue  # the parts of a replacement module are counted by the module itself
            if hasattr(module, "flops_per_token"):
                replaced.append(name)
                out[f"{i}.{name}"] = module
            elif is_linear_like(module):
                out[f"{i}.{name}"] = module
            elif is_fused_experts(module):
                out[f"{i}.{name}"] = _Cost(*experts_cost(module, _top_k(model)))
            elif hasattr(module, "top_k") and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
                nnz = int((module.weight != 0).sum())  # a MoE router: one [experts, hidden] matmul
                out[f"{i}.{name}"] = _Cost(2 * nnz, nnz)
    head = model.get_output_embeddings()
    if head is not None:
        out["lm_head"] = head
    return out


def module_cost(module: nn.Module) -> tuple[int, int]:
    """(FLOPs per token, stored non-zeros) of one linear-like or replacement module."""
    if hasattr(module, "flops_per_token"):
        return int(module.flops_per_token()), int(module.nonzeros())
    nnz = int((linear_weight(module) != 0).sum())
    return 2 * nnz, nnz


def model_costs(model: nn.Module) -> dict[str, Any]:
    """flops_per_token, nonzeros (stored, of the counted matmuls), params (all parameters, a compressed
    weight counted as the dense weight it stands for)."""
    arch = architecture_of(model)
    mlp = set(arch.mlp) | ({arch.experts} if arch.experts else set())
    flops = nonzeros = mlp_nonzeros = 0
    seen: set[int] = set()  # shared parts already counted, by identity
    for name, module in _cost_modules(model).items():
        f, n = module_cost(module)
        if hasattr(module, "shared_costs"):
            for part, part_flops, part_nonzeros in module.shared_costs().values():
                if id(part) in seen:
                    f, n = f - part_flops, n - part_nonzeros
                seen.add(id(part))
        flops += f
        nonzeros += n
        if name.split(".", 1)[-1] in mlp:
            mlp_nonzeros += n
    # Compressed weights are buffers: counted as the dense weights they stand for, as before compression.
    params = sum(p.numel() for p in model.parameters()) + sum(
        m.dense_numel() for m in model.modules() if hasattr(m, "dense_numel"))
    return {"flops_per_token": flops, "nonzeros": nonzeros, "mlp_nonzeros": mlp_nonzeros,
            "params": params}


def evaluate_model(model: nn.Module, tokenizer, data: str, windows: int | None, seqlen: int, *,
                   batch_size: int = 4, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Perplexity on `windows` non-overlapping windows of `data` (None or 0: all of them), with the
    model's FLOPs per token and non-zeros: what `eval` prints."""
    import time

    from .data import check_seqlen, corpus_tokens, evaluation_windows, start_with_bos
    from .errors import UsageError

    check_seqlen(model, seqlen)
    batch = start_with_bos(evaluation_windows(corpus_tokens(data, tokenizer), seqlen, windows or None, name=data),
                           tokenizer)
    start = time.perf_counter()
    result = perplexity(model.to(device), batch, batch_size=batch_size, device=device, progress=progress)
    if not math.isfinite(result["perplexity"]):
        raise UsageError(f"perplexity on {data} is {result['perplexity']}: the model's outputs overflow or are "
                         "undefined; check its weights and dtype")
    return {"perplexity": result["perplexity"], "windows": batch.shape[0], "seqlen": seqlen,
            "tokens": result["tokens"], "data": data, **model_costs(model),
            "eval_seconds": time.perf_counter() - start}

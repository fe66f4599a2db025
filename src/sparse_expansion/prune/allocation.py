"""Non-uniform sparsity at a fixed total: which layers, and which rows, keep more weights.

Two levels, both keeping the model's total number of zeros exactly what a uniform run asks for:
- layers: `owl` (outlier-weighted layerwise sparsity, Yin et al. 2024): a layer whose Wanda scores
  |W_ij| ||X_j|| (over all its linears, attention included) hold more outliers (above `owl_m` x
  the layer's mean score) is pruned less; the sparsities span target +- `owl_lmbda`, as in the
  OWL paper and llm-compressor.
- rows (output neurons) of each linear: `wd` (Wasserstein distance of the row's outputs to a
  Gaussian: entangled neurons keep more weights), `variance` (of the outputs), `norm` (of the
  row's weights), or `equal` (every row the same count). A row's sparsity is
  target + lmbda (1 - 2 rank / (rows - 1)), rank 0 being the lowest score: linear in the rank, so
  the heavy tail of WD does not decide the spread alone; the mean over rows is the target.

Counts are integers from the start (largest remainder), so the achieved total equals the
requested one up to a single weight of rounding, and a linear's count is fixed before any row or
block gets its share. Pure functions here; `Allocator` holds the plan for one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from .sparsity import Sparsity

LAYER_RULES = ("uniform", "owl")
ROW_RULES = ("uniform", "equal", "wd", "variance", "norm")


def check_rules(sparsity: Sparsity, layer_alloc: str, row_alloc: str, owl_lmbda: float, row_lmbda: float) -> None:
    if layer_alloc not in LAYER_RULES:
        raise UsageError(f"unknown layer allocation '{layer_alloc}'; choose from {', '.join(LAYER_RULES)}")
    if row_alloc not in ROW_RULES:
        raise UsageError(f"unknown row allocation '{row_alloc}'; choose from {', '.join(ROW_RULES)}")
    if (layer_alloc != "uniform" or row_alloc != "uniform") and sparsity.structured:
        raise UsageError(f"non-uniform allocation needs an unstructured sparsity, not {sparsity}")
    if not 0 <= owl_lmbda < 1 or not 0 <= row_lmbda < 1:
        raise UsageError("allocation lambdas must lie in [0, 1)")


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Fraction of scores above m x their mean (OWL's layerwise outlier ratio)."""
    scores = scores.flatten().double()
    return float((scores > scores.mean() * m).sum()) / scores.numel()


def owl_layer_sparsities(ratios: Sequence[float], target: float, lmbda: float) -> list[float]:
    """OWL: ratios min-max scaled to [0, 2 lmbda], centred; sparsity = target - (scaled - mean).
    Equal ratios (nothing to tell the layers apart) give the target everywhere."""
    r = torch.tensor(ratios, dtype=torch.float64)
    span = float(r.max() - r.min())
    if span <= 0:
        return [target] * len(ratios)
    scaled = (r - r.min()) / span * 2 * lmbda
    return (target - (scaled - scaled.mean())).tolist()


def rank_sparsities(scores: torch.Tensor, target: float, lmbda: float) -> torch.Tensor:
    """Per-row sparsity, linear in the score's rank: the highest score gets target - lmbda, the
    lowest target + lmbda (clipped to [0, 1]); NaN scores rank lowest; ties by position."""
    n = scores.numel()
    if n == 1 or lmbda == 0:
        return torch.full((n,), float(target), dtype=torch.float64)
    clean = torch.nan_to_num(scores.double(), nan=-math.inf)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[clean.argsort(stable=True)] = torch.arange(n, dtype=torch.float64)
    return (target + lmbda * (1 - 2 * ranks / (n - 1))).clamp(0.0, 1.0)


def exact_counts(fractions: torch.Tensor, sizes: torch.Tensor | int, total: int) -> torch.Tensor:
    """Integer counts near fractions x sizes that add up to exactly `total` (largest remainder;
    ties by position), each within [0, size]."""
    fractions = fractions.double().flatten()
    sizes_t = torch.as_tensor(sizes, dtype=torch.float64).expand_as(fractions)
    if not 0 <= total <= sizes_t.sum():
        raise ValueError(f"cannot place {total} zeros in {int(sizes_t.sum())} weights")
    ideal = fractions * sizes_t
    if ideal.sum() > 0:
        ideal = ideal * (total / ideal.sum())
    ideal = torch.minimum(ideal, sizes_t)
    counts = ideal.floor()
    while (missing := total - int(counts.sum())) > 0:  # once, unless capped units must pass theirs on
        room = counts < sizes_t
        remainder = torch.where(room, ideal - counts, torch.full_like(ideal, -1.0))
        order = remainder.argsort(descending=True, stable=True)
        take = order[: min(missing, int(room.sum()))]
        counts[take] += 1
        ideal = torch.maximum(ideal, counts)
    return counts.long()


def block_counts(zeros: torch.Tensor, in_features: int, blocksize: int) -> torch.Tensor:
    """Split each count of `zeros` [...] over SparseGPT's column blocks in proportion to their
    widths (cumulative rounding: exact per row and never more than a block holds) -> [..., blocks]."""
    edges = torch.arange(0, in_features + blocksize, blocksize).clamp(max=in_features).unique()
    share = (zeros.unsqueeze(-1).double() * edges.double() / in_features).round().long()
    return share.diff(dim=-1)


class TokenSample:
    """A seeded subsample of `size` tokens from the first batches a layer sees: memory is bounded
    by `size` plus one batch. Calibration windows sit at seeded random offsets, so the first
    batches are a random sample of windows."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.parts: list[torch.Tensor] = []
        self.count = 0
        self._value: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def add(self, x: torch.Tensor) -> None:
        if not self.full:
            self.parts.append(x.float())
            self.count += x.shape[0]

    def value(self) -> torch.Tensor:
        if self._value is None:
            x = torch.cat(self.parts) if len(self.parts) > 1 else self.parts[0]
            if x.shape[0] > self.size:
                generator = torch.Generator().manual_seed(self.seed)
                keep = torch.randperm(x.shape[0], generator=generator)[: self.size].sort().values
                x = x[keep.to(x.device)]
            self._value, self.parts = x, []
        return self._value


def row_scores(rule: str, weight: torch.Tensor, sample: torch.Tensor | None) -> torch.Tensor:
    """One score per output row of weight [out, in]; the higher, the more weights the row keeps."""
    from ..metrics.wasserstein import wasserstein_to_gaussian

    if rule == "norm":
        return weight.double().norm(dim=1)
    assert sample is not None, f"row rule {rule} needs a token sample"
    y = sample.float() @ weight.float().t()
    if rule == "variance":
        return y.double().var(0, correction=0)
    if rule == "wd":
        return wasserstein_to_gaussian(y)
    raise ValueError(f"row rule {rule!r} has no score")


@dataclass(frozen=True, kw_only=True)
class AllocationFields:
    """Where the zeros go at a fixed total, the fields every config that allocates shares:
    `layer_alloc` one of LAYER_RULES, `row_alloc` one of ROW_RULES. Uniform + uniform is the method
    as published. Checked once, when the config is made."""

    layer_alloc: str = "uniform"
    owl_m: float = 5.0  # OWL: a score is an outlier above owl_m x its layer's mean score
    owl_lmbda: float = 0.08  # OWL: layer sparsities span target +- owl_lmbda
    row_alloc: str = "uniform"
    row_lmbda: float = 0.1  # rows: sparsities span target +- row_lmbda, linear in the score's rank
    row_tokens: int = 4096  # rows: tokens per layer (seeded, from the first batches) for wd / variance

    # `sparsity` is each method's own first field.

    def __post_init__(self) -> None:
        check_rules(self.sparsity, self.layer_alloc, self.row_alloc, self.owl_lmbda, self.row_lmbda)

    def allocator(self, seed: int = 0) -> Allocator:
        return Allocator(self, seed)


class Allocator:
    """The zero counts of every target linear (and, when asked, of its rows) for one run.

    `prepare` sees the whole model before compression starts: it fixes the total count and, for
    OWL, measures every layer's outlier ratio on the dense model's calibration activations (one
    extra forward pass). Row scores are computed during the layer-sequential pass, from the
    inputs the layer actually gets.
    """

    def __init__(self, rules: AllocationFields, seed: int = 0) -> None:
        self.sparsity, self.layer_alloc, self.row_alloc = rules.sparsity, rules.layer_alloc, rules.row_alloc
        self.owl_m, self.owl_lmbda = rules.owl_m, rules.owl_lmbda
        self.row_lmbda, self.row_tokens = rules.row_lmbda, rules.row_tokens
        self.seed = seed
        self.zeros: dict[tuple[int, str], int] = {}
        self.layer_sparsity: dict[int, float] = {}
        self.outlier_ratios: dict[int, float] = {}

    @property
    def active(self) -> bool:
        return self.layer_alloc != "uniform" or self.row_alloc != "uniform"

    @property
    def needs_sample(self) -> bool:
        return self.row_alloc in ("wd", "variance")

    def sampler(self, index: int, group_index: int) -> TokenSample | None:
        return TokenSample(self.row_tokens, self.seed + 7919 * index + group_index) if self.needs_sample else None

    @torch.no_grad()
    def prepare(self, model: nn.Module, windows: torch.Tensor | None, *, targets: str = "mlp",
                batch_size: int = 8) -> None:
        from ..arch import decoder_layers, linear_weight, target_groups

        groups = target_groups(model, targets)
        layers = decoder_layers(model)
        numel = {(i, name): linear_weight(layer.get_submodule(name)).numel()
                 for i, layer in enumerate(layers) for g in groups for name in g}
        target = self.sparsity.fraction
        if self.layer_alloc == "owl":
            if windows is None:
                raise ValueError("OWL needs calibration windows")
            # As the OWL paper and llm-compressor: a layer's outlier ratio is over all its linears
            # (attention too), whatever --targets prunes.
            every = target_groups(model, "all")
            norms = dense_input_sq_norms(model, windows, every, batch_size)
            for i, layer in enumerate(layers):
                scores = [linear_weight(layer.get_submodule(name)).detach().abs().float()
                          * norms[(i, g)].sqrt().unsqueeze(0) for g in every for name in g]
                self.outlier_ratios[i] = outlier_ratio(torch.cat([s.flatten() for s in scores]), self.owl_m)
            per_layer = owl_layer_sparsities([self.outlier_ratios[i] for i in range(len(layers))], target,
                                             self.owl_lmbda)
        else:
            per_layer = [target] * len(layers)
        self.layer_sparsity = dict(enumerate(per_layer))
        keys = list(numel)
        sizes = torch.tensor([numel[k] for k in keys], dtype=torch.float64)
        fractions = torch.tensor([per_layer[i] for i, _ in keys], dtype=torch.float64)
        counts = exact_counts(fractions, sizes, round(target * float(sizes.sum())))
        self.zeros = {k: int(c) for k, c in zip(keys, counts)}

    def linear_zeros(self, index: int, name: str) -> int:
        if (index, name) not in self.zeros:
            raise RuntimeError("Allocator.prepare was not run on this model (compress() runs it)")
        return self.zeros[(index, name)]

    def row_zeros(self, index: int, name: str, weight: torch.Tensor, sample: torch.Tensor | None
                  ) -> torch.Tensor | None:
        """Zeros per row of weight [out, in], adding up to the linear's count; None = no row quota
        (the method chooses rows as usual: SparseGPT per block, Wanda per row)."""
        if self.row_alloc == "uniform":
            return None
        out_features, in_features = weight.shape
        total = self.linear_zeros(index, name)
        target = total / weight.numel()
        if self.row_alloc == "equal":
            fractions = torch.full((out_features,), target, dtype=torch.float64)
        else:
            fractions = rank_sparsities(row_scores(self.row_alloc, weight, sample), target, self.row_lmbda)
        return exact_counts(fractions, in_features, total)

    def record(self, index: int, name: str, row_zeros: torch.Tensor | None) -> dict[str, Any]:
        rec: dict[str, Any] = {"target_zeros": self.zeros.get((index, name)),
                               "layer_sparsity": self.layer_sparsity.get(index)}
        if index in self.outlier_ratios:
            rec["outlier_ratio"] = self.outlier_ratios[index]
        if row_zeros is not None:
            rec["row_zeros_min"], rec["row_zeros_max"] = int(row_zeros.min()), int(row_zeros.max())
        return rec


@torch.no_grad()
def dense_input_sq_norms(model: nn.Module, windows: torch.Tensor, groups, batch_size: int = 8
                         ) -> dict[tuple[int, tuple[str, ...]], torch.Tensor]:
    """Mean of x_j^2 per input feature of every target group of every layer, from one forward pass
    of the (dense, unchanged) model over the calibration windows."""
    from ..arch import decoder_layers
    from ..surgery import flat_inputs, hooks, layer_site
    from .stats import SquaredNormStat

    stats = {(i, g): SquaredNormStat() for i in range(len(decoder_layers(model))) for g in groups}
    sites = {layer_site(model, i, g[0]): flat_inputs(stat.add) for (i, g), stat in stats.items()}
    device = next(model.parameters()).device
    with hooks(model, sites):
        for start in range(0, windows.shape[0], batch_size):
            model(windows[start : start + batch_size].to(device), use_cache=False)
    return {k: s.value() for k, s in stats.items()}

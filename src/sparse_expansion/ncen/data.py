"""Offline data for NCEn, mapped into the unit box [0, 1]^D where the attacks work.

- `digits`: sklearn's 1,797 8×8 images, pixels / 16 (already in [0, 1]);
- `plays`: MiniLM sentence embeddings (384-d) of 400 spoken lines from each of 8 plays, label =
  which play; built and cached by `sparse_expansion.fpe.embeddings` exactly as FPE uses them.

Attacks in embedding space: torchattacks clamps to [0, 1], so every feature is mapped
affinely, u = (x - lo) / (hi - lo), with lo/hi its minimum and maximum over the whole data set.
An attack then perturbs the sentence *embedding* (not the text) within the box spanned by real
embeddings, and ε is a fraction of each feature's observed range. For digits lo = 0, hi = 1
(the pixel scale), so u is the image itself.

Epsilons from the data's scale: `scale` = median, over class pairs, of the L∞ distance between
class means in box coordinates (how far one feature must move, at most, to go from one class's
average to another's). The grid is scale × (1/32, 1/16, 1/8, 1/4, 1/2): 1/32 should leave any
reasonable classifier intact, 1/2 moves every feature half-way between two class means, where
no classifier is expected to survive. The headline ε is the middle one, scale / 8.
Measured: digits scale 0.75 (headline 0.094, 1.5 gray levels of 16); plays scale 0.055
(headline 0.0069 of each feature's range, about 0.05 in L2 for a unit-norm embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError

DATASETS = ("digits", "plays")
EPS_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
SPLIT_SEED = 0
TEST_FRACTION = 0.25


@dataclass
class Dataset:
    """Train/test tensors in box coordinates, plus what the report needs to say about them."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    scale: float  # median L∞ distance between class means, box coordinates

    @property
    def features(self) -> int:
        return self.x_train.shape[1]

    def eps_grid(self) -> list[float]:
        return [round_sig(self.scale * f) for f in EPS_FRACTIONS]


def round_sig(v: float, digits: int = 2) -> float:
    """Round to `digits` significant digits, so ε keys read well in JSON and tables."""
    if v == 0:
        return 0.0
    return float(f"{v:.{digits}g}")


def to_unit_box(x: torch.Tensor) -> torch.Tensor:
    """Per-feature affine map onto [0, 1] using the data's own minimum and maximum."""
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def class_mean_scale(u: torch.Tensor, y: torch.Tensor) -> float:
    """Median over class pairs of the L∞ distance between class means."""
    means = torch.stack([u[y == c].mean(dim=0) for c in torch.unique(y)])
    d = torch.cdist(means, means, p=float("inf"))
    i, j = torch.triu_indices(len(means), len(means), offset=1)
    return float(d[i, j].median())


def load(name: str, limit: int | None = None) -> Dataset:
    """The named data set in box coordinates; `limit` keeps the first examples of a seeded
    stratified subsample (for tests)."""
    if name not in DATASETS:
        raise UsageError(f"unknown --data {name!r}; use one of {', '.join(DATASETS)}")
    from ..fpe.embeddings import load_task, stratified_split

    x, y, classes = load_task(name)
    x = x.to(torch.float32)
    u = to_unit_box(x)
    scale = class_mean_scale(u, y)
    tr, te = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    if limit is not None:
        tr, te = tr[:: max(1, len(tr) // limit)][:limit], te[:: max(1, len(te) // limit)][:limit]
    return Dataset(name, u[tr], y[tr], u[te], y[te], list(classes), scale)

"""The Sparse Expansion router: PCA to a few dimensions, then k-means; both in plain torch.

Pure functions (fit_pca, kmeans) plus a small module (Router) that holds the fitted buffers and
assigns each token to its nearest centroid (with hub/modeling_sparse_expansion.py's functions, which
a saved folder's own code routes with too). Deterministic given a seed, on CPU or GPU.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..hub.modeling_sparse_expansion import fold_router, nearest_centroid
from ..prune.stats import gram
from ..threads import one_thread


def default_pca_dim(in_features: int) -> int:
    """The reference's hidden_dim // 32, at least 8 (and never more than the input)."""
    return min(in_features, max(8, in_features // 32))


def fit_pca(x: torch.Tensor, dim: int, second_moment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], components [d, dim]): the covariance's top eigenvectors, sign-fixed so the result
    does not depend on the eigen-solver's arbitrary signs.

    `second_moment` (sum of x x^T, e.g. from the Hessian pass the caller makes anyway) saves the
    one expensive product, otherwise computed on the lower blocks only (`gram`). The covariance is
    formed in float64 (it subtracts two large terms) from a float64 sum of x, without a float64 copy
    of x; the eigenproblem is solved in float32, faster than float64 at 1536 x 1536
    (benchmarks/pruning/expansion_parts.py).
    """
    n = x.shape[0]
    mean = x.sum(0, dtype=torch.float64) / n
    if second_moment is None:
        second_moment = gram(x.float())
    cov = (second_moment.double() - n * torch.outer(mean, mean)) / max(n - 1, 1)
    _, vectors = torch.linalg.eigh(cov.float())  # ascending eigenvalues
    components = vectors[:, -dim:].flip(-1)
    signs = torch.sign(components[components.abs().argmax(0), torch.arange(dim)])
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    return mean.float(), components.float()


def _sq_distances(z: torch.Tensor, centroids: torch.Tensor, z_sq: torch.Tensor | None = None) -> torch.Tensor:
    """|z_i - c_j|^2 [n, k]; `z_sq` is z.pow(2).sum(1, keepdim=True) when the caller keeps it (k-means
    measures the same points against new centres every iteration)."""
    if z_sq is None:
        z_sq = z.pow(2).sum(1, keepdim=True)
    return (z_sq - 2 * z @ centroids.t() + centroids.pow(2).sum(1)).clamp_min(0)


def _kmeans_pp(z: torch.Tensor, k: int, generator: torch.Generator, z_sq: torch.Tensor | None = None
               ) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to squared distance."""
    first = torch.randint(z.shape[0], (1,), generator=generator, device="cpu").item()
    centres = [z[first]]
    closest = _sq_distances(z, z[first : first + 1], z_sq).squeeze(1)
    for _ in range(1, k):
        weights = closest.cpu()  # the generator is a CPU one: one copy per centre, no other sync
        total = weights.sum()
        if total <= 0:  # fewer distinct points than clusters: repeat a point
            idx = torch.randint(z.shape[0], (1,), generator=generator, device="cpu").item()
        else:
            idx = torch.multinomial(weights / total, 1, generator=generator).item()
        centres.append(z[idx])
        closest = torch.minimum(closest, _sq_distances(z, z[idx : idx + 1], z_sq).squeeze(1))
    return torch.stack(centres)


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [k, dim]
    labels: torch.Tensor  # [n]
    inertia: float


def kmeans(z: torch.Tensor, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 100,
           tol: float = 1e-6) -> KMeansResult:
    """Lloyd's algorithm from k-means++ seeds, best of n_init restarts (lowest inertia).

    An emptied cluster is re-seeded at the point farthest from its centre, so all k stay in use.
    """
    z = z.float()
    z_sq = z.pow(2).sum(1, keepdim=True)
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        centroids = _kmeans_pp(z, k, generator, z_sq)
        previous = float("inf")
        for _ in range(max_iter):
            dist = _sq_distances(z, centroids, z_sq)
            min_dist, labels = dist.min(1)
            counts = torch.bincount(labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, labels, z)
            empty = counts == 0
            centroids = sums / counts.clamp_min(1).unsqueeze(1).to(z.dtype)
            # One read from the device per iteration (inertia and the empty count together): on a GPU
            # each read waits for the queue to drain.
            inertia, n_empty = torch.stack([min_dist.sum(), empty.sum().to(min_dist.dtype)]).tolist()
            if n_empty:
                far = min_dist.argsort(descending=True)[: int(n_empty)]
                centroids[empty] = z[far]
            if previous - inertia <= tol * max(previous, 1e-12) and not n_empty:
                break
            previous = inertia
        labels = nearest_centroid(z, centroids)
        result = KMeansResult(centroids, labels, float((z - centroids[labels]).pow(2).sum()))
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def balance_offsets(z: torch.Tensor, centroids: torch.Tensor, factor: float, max_rounds: int | None = None
                    ) -> torch.Tensor:
    """Per-cluster offsets b [k] so that routing by argmin_c |z - c|^2 + b_c gives every cluster
    between floor(n / (k factor)) and ceil(factor n / k) of the tokens z [n, dim] (factor >= 1).

    These are the dual prices of a size-constrained assignment: each round takes the cluster that
    breaks its bound most and moves its price just far enough that the excess (or the shortfall)
    of tokens changes sides, those with the smallest margin first. Clusters pushed past a bound
    by another's move are fixed in later rounds; the loop stops after `max_rounds` (default 250 k)
    with the best effort so far. Deterministic: no randomness, ties by position.
    """
    n, k = z.shape[0], centroids.shape[0]
    offsets = torch.zeros(k, dtype=torch.float64)
    if k == 1 or factor <= 0:
        return offsets
    if factor < 1:
        raise ValueError(f"balance factor must be >= 1 (got {factor})")
    hi, lo = math.ceil(factor * n / k), math.floor(n / (k * factor))  # always feasible
    dist = _sq_distances(z.double(), centroids.double())
    for _ in range(max_rounds or 250 * k):
        cost = dist + offsets
        labels = cost.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        excess, shortfall = counts - hi, lo - counts
        worst_over, worst_under = int(excess.argmax()), int(shortfall.argmax())
        if excess[worst_over] <= 0 and shortfall[worst_under] <= 0:
            break
        if excess[worst_over] >= shortfall[worst_under]:
            c, move = worst_over, int(excess[worst_over])
            mine = labels == c
            others = cost[mine].clone()
            others[:, c] = float("inf")
            margin = (others.min(1).values - cost[mine, c]).sort().values  # raise b_c by this to push out
            offsets[c] += _between(margin, move)
        else:
            c, move = worst_under, int(shortfall[worst_under])
            gap = (cost[~(labels == c), c] - cost[~(labels == c)].min(1).values).sort().values
            offsets[c] -= _between(gap, move)
    return offsets


def _between(sorted_margins: torch.Tensor, move: int) -> float:
    """A price step that moves exactly the `move` tokens of smallest margin: halfway between the
    last of them and the next, so the float32 router that stores the offsets (Router.fit) routes
    them as the float64 prices did; a bare nudge past the last one (the first version) left the
    boundary token to rounding, and two clusters at their bounds then traded one token back and
    forth in ever smaller steps until the round limit."""
    step = float(sorted_margins[move - 1])
    nudge = step + 1e-9 * (1 + abs(step))
    if move >= sorted_margins.shape[0]:
        return nudge
    return max(nudge, 0.5 * (step + float(sorted_margins[move])))


class Router(nn.Module):
    """Sends each token to one of k experts: nearest centroid of its PCA projection.

    When k <= pca_dim the projection and the distances fold into one [in, k] matrix
    (|z - c|^2 - |z|^2 = |c|^2 + 2 mean.M - 2 x.M with M = components @ centroids^T): routing a
    token is then one addmm and an argmin, which is what single-token generation pays for.
    """

    def __init__(self, in_features: int, pca_dim: int, num_experts: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("components", torch.zeros(in_features, pca_dim))
        self.register_buffer("centroids", torch.zeros(num_experts, pca_dim))
        self._fold: tuple[tuple, tuple[torch.Tensor, torch.Tensor] | None] | None = None
        self.last_route = LastRoute()

    @classmethod
    def fit(cls, x: torch.Tensor, num_experts: int, pca_dim: int, *, seed: int = 0, n_init: int = 10,
            second_moment: torch.Tensor | None = None, balance: float = 0.0) -> tuple[Router, torch.Tensor]:
        """Fit on calibration inputs x [n, in]; returns the router and its routes for x, which are
        k-means' labels up to float rounding at exact ties (so experts are built for exactly the
        tokens the router will send them).

        `balance` >= 1 bounds the cluster sizes on x to [n / (k balance), balance n / k] with one
        offset per expert (`balance_offsets`). The offsets are stored as one extra centroid
        coordinate sqrt(b_c - min b) against an all-zero PCA component, so |z - c|^2 gains exactly
        b_c - min b and the saved router keeps its format (pca_dim is one larger).
        """
        mean, components = fit_pca(x, pca_dim, second_moment)
        z = (x.float() - mean) @ components
        with one_thread(z.device):  # many small k-means steps: faster on one thread (CPU)
            result = kmeans(z, num_experts, seed=seed, n_init=n_init)
        centroids = result.centroids
        if balance and num_experts > 1:
            offsets = balance_offsets(z, centroids, balance)
            extra = (offsets - offsets.min()).sqrt().to(centroids.dtype)
            components = torch.cat([components, torch.zeros(components.shape[0], 1, dtype=components.dtype)], 1)
            centroids = torch.cat([centroids, extra.unsqueeze(1)], 1)
        router = cls(x.shape[1], components.shape[1], num_experts)
        router.mean.copy_(mean)
        router.components.copy_(components)
        router.centroids.copy_(centroids)
        router = router.to(x.device)
        return router, router(x)

    @property
    def folds(self) -> bool:
        return self.centroids.shape[0] <= self.components.shape[1]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) @ self.components

    def folded(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The folded scoring (bias [k], matrix [in, k]), or None when it does not fold (k > pca_dim).

        Kept, and rebuilt whenever a buffer is replaced or written to (their identities and version
        counters are the key). Read at every decode step, so the buffers are read from the module's
        own table rather than through nn.Module's per-attribute lookup."""
        buffers = self._buffers
        mean, components, centroids = buffers["mean"], buffers["components"], buffers["centroids"]
        key = (id(mean), mean._version, id(components), components._version, id(centroids), centroids._version)
        if self._fold is None or self._fold[0] != key:  # the same fold as a saved folder's own code
            folds = centroids.shape[0] <= components.shape[1]
            self._fold = (key, fold_router(mean, components, centroids) if folds else None)
        return self._fold[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expert index for every token of x [..., in] -> [...]."""
        flat = x.reshape(-1, x.shape[-1])
        folded = self.folded()
        if folded is not None:
            bias, matrix = folded
            labels = torch.addmm(bias, flat.to(matrix.dtype), matrix).argmin(1)
        else:
            labels = nearest_centroid(self.project(flat), self.centroids)
        return labels.reshape(x.shape[:-1])

    def flops_per_token(self) -> int:
        d, p = self.components.shape
        k = self.centroids.shape[0]
        if self.folds:
            return 2 * d * k + k  # one [in, k] product plus the bias
        return 2 * d * p + 3 * p * k  # projection, then squared distances to k centroids


class LastRoute:
    """The labels of the last tensor a router routed, so linears fed the very same tensor (gate_proj
    and up_proj) route it once (expand/module.py's route_once).

    The tensor is held by a weak reference (a freed tensor never matches a new one at the same
    address) and its version counter catches in-place writes. Inference-mode tensors have no version
    counter, so they are never remembered. A copied or pickled router starts with none (a weak
    reference can be neither copied nor pickled)."""

    __slots__ = ("_ref", "_version", "_labels")

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._version = -1
        self._labels: torch.Tensor | None = None

    def __reduce__(self):
        return (LastRoute, ())

    def get(self, x: torch.Tensor) -> torch.Tensor | None:
        """The labels remembered for x, if x is the very tensor last routed and unmodified since."""
        if self._ref is None or x.is_inference() or self._ref() is not x or self._version != x._version:
            return None
        return self._labels

    def put(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        if not x.is_inference():
            self._ref, self._version, self._labels = weakref.ref(x), x._version, labels

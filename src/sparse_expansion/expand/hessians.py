"""The cluster Hessians of Sparse Expansion as pure statistics: accumulated batch by batch, then
shrunk toward the layer's Hessian. The compressor (compressor.py) owns when each step runs.

Per cluster c of a linear's inputs, H_c = 2/n_c sum over its tokens of x x^T; a small cluster's
estimate is noisy, so H_c -> (1 - lam_c) H_c + lam_c H, H being the whole layer's, with lam_c
chosen by a rule (`shrinkage`).
"""

from __future__ import annotations

import torch

from ..prune.stats import HessianStat

SHRINK_RULES = ("blend", "prior", "lw", "none")  # see ExpandConfig.shrink

def cluster_hessians(batches: list[torch.Tensor], labels: list[torch.Tensor], k: int) -> tuple[torch.Tensor, list[int]]:
    """H_c = 2/n_c sum over cluster c's tokens of x x^T for labelled batches (empty -> zeros);
    `ClusterHessianStat` does the same batch by batch."""
    stat = ClusterHessianStat(k)
    for x, lab in zip(batches, labels):
        stat.add(x, lab)
    return stat.hessians(), stat.counts


class ClusterHessianStat:
    """Per cluster: sum of x x^T, token count and sum of |x|^4 (for Ledoit-Wolf), added batch by batch.

    Its size is k Hessians and 2k scalars whatever the number of tokens. Each cluster's sum is
    accumulated exactly as the plain SparseGPT statistic (`HessianStat`) accumulates it, so one
    cluster reproduces SparseGPT's Hessian bit for bit.
    """

    def __init__(self, k: int, fourth: bool = True) -> None:
        """`fourth`: also sum |x|^4 per cluster (only the `lw` rule reads it; a pass over every batch)."""
        self.k = k
        self.stats = [HessianStat() for _ in range(k)]
        self.fourth = torch.zeros(k, dtype=torch.float64)
        self.tracks_fourth = fourth
        self._scratch: torch.Tensor | None = None  # one [d, d] product buffer shared by the k clusters
        self.cross_total: torch.Tensor | None = None  # sum x_dense x^T over every token (asymmetric calibration)

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.stats]

    def add(self, x: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        """`reference`: the dense model's inputs of the same tokens (asymmetric calibration; every batch or none)."""
        x = x.float()
        counts = torch.bincount(labels, minlength=self.k)
        if self.tracks_fourth:
            sq = x.pow(2).sum(1).double()
            self.fourth += torch.zeros(self.k, dtype=torch.float64).index_add_(0, labels.cpu(), sq.cpu().pow(2))
        sizes = counts.tolist()  # the one read from the device per batch
        full = max(range(self.k), key=sizes.__getitem__)
        if reference is not None:  # one cross term for the layer: the experts share its target (compressor.py)
            cross = reference.float().t() @ x
            self.cross_total = cross if self.cross_total is None else self.cross_total.add_(cross)
        if sizes[full] == x.shape[0]:  # the whole batch in one cluster (always so for k = 1)
            self.stats[full].add(x)
            return
        order = torch.argsort(labels, stable=True)
        d = x.shape[1]
        if self._scratch is None or self._scratch.shape[0] != d or self._scratch.device != x.device:
            self._scratch = torch.empty(d, d, dtype=torch.float32, device=x.device)
        for c, chunk in enumerate(torch.split(x.index_select(0, order), sizes)):
            if chunk.shape[0]:
                self.stats[c].add(chunk, self._scratch)

    def totals(self, d: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """[k, d, d] sums of x x^T (zeros for empty clusters)."""
        out = torch.zeros(self.k, d, d, dtype=torch.float32, device=device)
        for c, stat in enumerate(self.stats):
            if stat.count:
                out[c] = stat.total
        return out

    def hessians(self) -> torch.Tensor:
        d = next(s.total.shape[0] for s in self.stats if s.count)
        out = torch.zeros(self.k, d, d, dtype=torch.float32, device=next(s.total.device for s in self.stats if s.count))
        for c, stat in enumerate(self.stats):
            if stat.count:
                out[c] = stat.value()
        return out

    def has_cross(self) -> bool:
        """Whether the batches came with the dense model's inputs (asymmetric calibration)."""
        return self.cross_total is not None

    def layer_cross(self) -> torch.Tensor:
        """C = 2/n sum x_dense x^T over every token of the layer (asymmetric calibration)."""
        return self.cross_total * (2.0 / sum(self.counts))

    def layer_hessian(self) -> torch.Tensor:
        """H over every token of the layer: each token is in exactly one cluster."""
        return sum(st.total for st in self.stats if st.count) * (2.0 / sum(self.counts))

    def nbytes(self) -> int:
        buffers = [t for t in (self._scratch, self.cross_total) if t is not None]
        return sum(s.total.numel() * s.total.element_size() for s in self.stats if s.total is not None) + \
            self.fourth.numel() * self.fourth.element_size() + sum(t.numel() * t.element_size() for t in buffers)


def shrinkage(rule: str, counts: list[int], *, min_tokens: float = 0.0, fourth: torch.Tensor | None = None,
              totals: torch.Tensor | None = None) -> list[float]:
    """lam_c for H_c -> (1 - lam_c) H_c + lam_c H, per cluster (1 for an empty cluster).

    `lw` (Ledoit & Wolf 2004, with the layer's matrix as the target as in Schaefer & Strimmer
    2005): with S_c = (1/n_c) sum x x^T and S = the layer's, lam_c = min(1, beta_c / delta_c),
    beta_c = (1/n_c) [(1/n_c) sum |x|^4 - |S_c|_F^2] (the summed variance of S_c's entries) and
    delta_c = |S_c - S|_F^2 (how far the cluster's matrix is from the layer's). A small cluster, or one
    that looks like the layer anyway, is pulled in; a large distinct one keeps its own Hessian.
    """
    lam = []
    if rule == "lw":
        assert fourth is not None and totals is not None, "the lw rule needs the fourth moments and the totals"
        n_all = sum(counts)
        full = totals.sum(0) / n_all
    for c, n in enumerate(counts):
        if n == 0:
            lam.append(1.0)
        elif rule == "none":
            lam.append(0.0)
        elif rule == "blend":
            lam.append(max(0.0, 1.0 - n / min_tokens) if min_tokens > 0 else 0.0)
        elif rule == "prior":
            lam.append(min_tokens / (n + min_tokens))
        elif rule == "lw":
            s_c = totals[c].double() / n
            beta = (float(fourth[c]) / n - float(s_c.pow(2).sum())) / n
            delta = float((s_c - full.double()).pow(2).sum())
            lam.append(1.0 if delta <= 0 else min(1.0, max(0.0, beta / delta)))
        else:
            raise ValueError(f"unknown shrink rule {rule!r}")
    return lam


def blend_small_clusters(hessians: torch.Tensor, counts: list[int], full: torch.Tensor,
                         min_tokens: int) -> list[int]:
    """Mix the full-layer Hessian into clusters with fewer than min_tokens tokens, in proportion
    to what they lack: H_c <- (n_c H_c + (m - n_c) H) / m. Returns the blended cluster indices."""
    lam = shrinkage("blend", counts, min_tokens=min_tokens)
    apply_shrinkage(hessians, full, lam)
    return [c for c, v in enumerate(lam) if v > 0]


def apply_shrinkage(hessians: torch.Tensor, full: torch.Tensor, lam: list[float]) -> None:
    """In place: H_c <- (1 - lam_c) H_c + lam_c H for every lam_c > 0."""
    for c, v in enumerate(lam):
        if v >= 1.0:
            hessians[c] = full
        elif v > 0:
            hessians[c] = (1.0 - v) * hessians[c] + v * full


def shrunk_hessians(stat: ClusterHessianStat, rule: str, blend_below: float) -> tuple[torch.Tensor, list[float]]:
    """(the k cluster Hessians [k, d, d], each pulled toward the layer's by its lam_c; the lam_c).

    `rule` is one of SHRINK_RULES (expand/compressor.py) and `blend_below` its strength R, in
    multiples of d tokens. One cluster is the layer: nothing to shrink toward."""
    counts = stat.counts
    hessians = stat.hessians()
    d = hessians.shape[-1]
    min_tokens = blend_below * d
    lam = [0.0] * stat.k
    if stat.k > 1:
        totals = stat.totals(d, hessians.device) if rule == "lw" else None
        if rule == "lw" and not stat.tracks_fourth:
            raise ValueError("the lw rule needs a ClusterHessianStat made with fourth=True")
        lam = shrinkage(rule, counts, min_tokens=round(min_tokens) if rule == "blend" else min_tokens,
                        fourth=stat.fourth, totals=totals)
        del totals
        if any(v > 0 for v in lam):
            apply_shrinkage(hessians, stat.layer_hessian(), lam)
    return hessians, lam

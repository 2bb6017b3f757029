"""Exact k-means, fast: k-means++ seeding and Lloyd iterations that skip settled points.

Plain functions on torch tensors (any device; the caller puts the data there):

* :func:`kmeans_plusplus` -- greedy k-means++ (Arthur & Vassilvitskii, 2007, with the
  ``2 + log k`` local trials of scikit-learn), optionally on a random subsample.
* :func:`lloyd` -- Lloyd's algorithm with Elkan-style triangle-inequality bounds
  (Elkan, 2003; Hamerly, 2010). Every point keeps an upper bound on the distance to
  its own centre and a lower bound on the distance to every other centre (or, when an
  ``n x k`` table would be too large, one bound to the second-nearest centre). When a
  centre moves by ``delta`` the bounds loosen by ``delta``; a point is recomputed only
  when its bounds no longer prove that its assignment is unchanged. The result is the
  same fixed point as plain Lloyd from the same seeds: the bounds decide *which*
  distances to compute, never *what* they are. Centres are kept as float64 sums that
  are updated by the points that move, so an iteration late in the run costs
  ``O(n k)`` comparisons instead of an ``n x k x d`` product.

Distances are computed as ``|x|^2 - 2 x.c + |c|^2`` by one matrix product per chunk
of rows, as scikit-learn and faiss do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

#: Largest number of entries of the ``n x k`` lower-bound table (float32, 1 GiB).
MAX_BOUND_ENTRIES = 2**28
#: Rows per distance product: bounds the ``chunk x k`` temporary.
CHUNK_ROWS = 32768
#: Slack on the bounds, relative, for float32 rounding in the distance expansion.
_SLACK = 1e-5
#: Above this fraction of the points changing cluster, the centre sums are summed afresh
#: (chunked, in the data's precision) instead of moving each point's float64 row between
#: two sums, which costs several times more per row.
RESUM_FRACTION = 0.02
#: Above this fraction of the points in doubt, all are recomputed in slices of the data
#: rather than gathered: a gathered row costs more than one read in place.
FULL_PASS_FRACTION = 0.5


@dataclass
class LloydResult:
    """What :func:`lloyd` found.

    Attributes
    ----------
    labels : LongTensor of shape (n,)
    centers : Tensor of shape (k, d), same dtype as the data
    inertia : float
        Sum of squared distances of points to their centre.
    n_iter : int
    recomputed : list of float
        Fraction of points whose distances were recomputed at each iteration.
    """

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int
    recomputed: list[float]


def squared_distances(X: torch.Tensor, C: torch.Tensor, x_sq: torch.Tensor | None = None,
                      c_sq: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances, shape (m, k), between rows of X (m, d) and C (k, d),
    written into ``out`` (contiguous, (m, k)) when given."""
    if x_sq is None:
        x_sq = row_norms_sq(X)
    if c_sq is None:
        c_sq = row_norms_sq(C)
    # |x|^2 - 2 x.c + |c|^2: the product added to |c|^2 broadcast, then |x|^2 in place, so
    # no m x k temporary beside the result
    D = torch.addmm(c_sq[None, :], X, C.T, alpha=-2.0, out=out)
    return D.add_(x_sq[:, None]).clamp_(min=0.0)


def row_norms_sq(X: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean norm of every row of X (n, d), without an n x d temporary."""
    return torch.linalg.vector_norm(X, dim=1).square_()


def nearest_centers(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of C (k, d) for every row of X (n, d), in row chunks."""
    c_sq = row_norms_sq(C)
    labels = torch.empty(X.shape[0], dtype=torch.long, device=X.device)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, X.shape[0])
        labels[start:stop] = squared_distances(X[start:stop], C, c_sq=c_sq).argmin(1)
    return labels


class _Assigner:
    """Nearest and second-nearest centre of all rows or of some, in row chunks, written in
    place into a run's ``labels`` (n,), ``upper`` (n,) and ``other``: every distance (n, k)
    or the distance to the second nearest (n,).

    The chunk buffers are made once and reused: a fresh buffer of this size is a fresh
    mapping from the operating system, and touching its pages costs more than the
    arithmetic that fills it (a gather of most of the rows into new memory cost 7x one into
    a buffer already touched).
    """

    def __init__(self, X: torch.Tensor, x_sq: torch.Tensor, k: int):
        self.X, self.x_sq = X, x_sq
        rows = min(CHUNK_ROWS, X.shape[0])
        self._rows = torch.empty((rows, X.shape[1]), dtype=X.dtype, device=X.device)
        self._distances = torch.empty((rows, k), dtype=X.dtype, device=X.device)

    def __call__(self, C, c_sq, labels, upper, other, rows: torch.Tensor | None = None) -> None:
        keep_all = other.dim() == 2
        m = self.X.shape[0] if rows is None else len(rows)
        k = C.shape[0]
        for start in range(0, m, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, m)
            if rows is None:  # a slice of the data, its results written as slices
                part, where = self.X[start:stop], slice(start, stop)
                D = other[where] if keep_all else self._distances[:stop - start]
            else:
                where = rows[start:stop]
                part = torch.index_select(self.X, 0, where, out=self._rows[:stop - start])
                D = self._distances[:stop - start]
            squared_distances(part, C, self.x_sq[where], c_sq, out=D).sqrt_()
            if keep_all:
                best, arg = D.min(1)
                if rows is not None:
                    other.index_copy_(0, where, D)
            elif k > 1:
                two, args = D.topk(2, dim=1, largest=False)
                best, arg = two[:, 0], args[:, 0]
                other[where] = two[:, 1]
            else:
                best, arg = D[:, 0], torch.zeros(stop - start, dtype=torch.long, device=D.device)
                other[where] = math.inf
            labels[where] = arg
            upper[where] = best


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, rng: np.random.Generator,
                    sample_size: int | None = None, n_local_trials: int | None = None,
                    n_seeds: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeds chosen among the rows of ``X`` (n, d).

    Parameters
    ----------
    X : Tensor of shape (n, d)
    n_clusters : int
    rng : numpy Generator
    sample_size : int, optional
        Seed on this many rows drawn at random (all rows when None or >= n).
    n_local_trials : int, optional
        Candidates tried per new centre; default ``2 + int(log(n_clusters))``.
    n_seeds : int, optional
        Draw this many independent seedings at once (for restarts): the candidates of
        all of them are measured by one matrix product per step, which matters because
        a step is otherwise too small to keep the cores busy.

    Returns
    -------
    Tensor of shape (n_clusters, d), or (n_seeds, n_clusters, d) when ``n_seeds`` is given
    """
    n = X.shape[0]
    if sample_size is not None and sample_size < n:
        rows = torch.from_numpy(np.sort(rng.choice(n, size=sample_size, replace=False))).to(X.device)
        X = X[rows]
        n = sample_size
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(n_clusters))
    runs = 1 if n_seeds is None else n_seeds
    every = torch.arange(runs, device=X.device)
    x_sq = row_norms_sq(X)
    centers = torch.empty((runs, n_clusters, X.shape[1]), dtype=X.dtype, device=X.device)
    first = torch.from_numpy(rng.integers(n, size=runs)).to(X.device)
    centers[:, 0] = X[first]
    closest = squared_distances(X, X[first], x_sq, x_sq[first]).T.double()  # (runs, n)
    for c in range(1, n_clusters):
        cumulative = torch.cumsum(closest, 1)
        total = cumulative[:, -1:]
        draws = torch.from_numpy(rng.random((runs, trials))).to(cumulative) * total
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)  # (runs, trials)
        flat = total[:, 0] <= 0  # fewer distinct points than clusters: any point will do
        if bool(flat.any()):
            candidates[flat] = torch.from_numpy(rng.integers(n, size=(int(flat.sum()), trials))).to(candidates)
        ids = candidates.reshape(-1)
        d_cand = squared_distances(X, X[ids], x_sq, x_sq[ids]).T.double().reshape(runs, trials, n)
        trial = torch.minimum(closest[:, None, :], d_cand)
        best = trial.sum(2).argmin(1)  # (runs,)
        closest = trial[every, best]
        centers[:, c] = X[candidates[every, best]]
    return centers[0] if n_seeds is None else centers


def _cluster_sums(X: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 sum of the rows of each cluster (k, d) and their counts (k,)."""
    sums = torch.zeros((k, X.shape[1]), dtype=torch.float64, device=X.device)
    part = torch.zeros((k, X.shape[1]), dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[0], CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, X.shape[0])
        # a chunk summed in the data's precision (no float64 copy of it), the chunks in float64
        part.zero_().index_add_(0, labels[start:stop], X[start:stop])
        sums += part.double()
    counts = torch.bincount(labels, minlength=k).double()
    return sums, counts


def lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int = 300, tol: float = 1e-4,
          label_tol: float = 0.0, bounds: str = "auto") -> LloydResult:
    """Lloyd's k-means from ``centers``, skipping points whose assignment provably holds.

    Parameters
    ----------
    X : Tensor of shape (n, d), floating point
    centers : Tensor of shape (k, d)
        Initial centres.
    max_iter : int
    tol : float
        Stop when the summed squared centre shift is at most ``tol`` times the mean
        variance of the features (scikit-learn's criterion), or when no point moves.
    label_tol : float
        Also stop when at most this fraction of the points changed cluster in an
        iteration (0: only the criteria above).
    bounds : {"auto", "elkan", "hamerly"}
        ``elkan`` keeps ``n x k`` lower bounds (prunes most), ``hamerly`` one per point
        (for very large ``n x k``); ``auto`` picks elkan below ``MAX_BOUND_ENTRIES``.

    Returns
    -------
    LloydResult
    """
    n, d = X.shape
    k = centers.shape[0]
    if bounds == "auto":
        bounds = "elkan" if n * k <= MAX_BOUND_ENTRIES else "hamerly"
    elkan = bounds == "elkan"
    x_sq = row_norms_sq(X)
    C = centers.to(X.dtype).clone()
    assign = _Assigner(X, x_sq, k)
    labels = torch.empty(n, dtype=torch.long, device=X.device)
    upper = torch.empty(n, dtype=X.dtype, device=X.device)
    lower = torch.empty((n, k) if elkan else (n,), dtype=X.dtype, device=X.device)
    assign(C, row_norms_sq(C), labels, upper, lower)
    sums, counts = _cluster_sums(X, labels, k)
    # mean feature variance from the totals: sum |x|^2 / n - |mean|^2, over d
    total_sq = float(x_sq.double().sum())
    mean = sums.sum(0) / n
    threshold = tol * max(total_sq / n - float(mean @ mean), 0.0) / d
    recomputed = [1.0]
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        empty = counts == 0
        if bool(empty.any()):
            # scikit-learn's rule: an empty cluster takes the point farthest from its centre
            far = torch.topk(upper, int(empty.sum())).indices
            for j, i in zip(torch.nonzero(empty)[:, 0].tolist(), far.tolist()):
                old = int(labels[i])
                sums[old] -= X[i].double()
                counts[old] -= 1
                sums[j] += X[i].double()
                counts[j] += 1
                labels[i] = j
                lower[i] = -math.inf  # its bounds no longer hold: recompute it below
        new_C = (sums / counts.clamp(min=1)[:, None]).to(X.dtype)
        drift = (new_C - C).norm(dim=1)
        shift = float((drift.double() ** 2).sum())
        C = new_C
        c_sq = row_norms_sq(C)
        # below the tolerance, one last assignment step makes labels match the centres
        settled = shift <= threshold
        # loosen the bounds by how far the centres moved (a centre that kept its members
        # did not move at all, and its bounds stay exact)
        loosen = torch.where(drift > 0, drift * (1 + _SLACK) + _SLACK, drift)
        upper += loosen[labels]
        if elkan:
            lower -= loosen[None, :]
            lower.scatter_(1, labels[:, None], math.inf)
            nearest_other = torch.amin(lower, 1)
        else:
            lower -= float(loosen.max())
            nearest_other = lower
        suspect = torch.nonzero(upper > nearest_other)[:, 0]
        rows = None if len(suspect) > n * FULL_PASS_FRACTION else suspect
        recomputed.append(1.0 if rows is None else len(suspect) / n)
        moved = 0
        if rows is None or len(rows):
            old_labels = labels.clone() if rows is None else labels[rows]
            assign(C, c_sq, labels, upper, lower, rows)
            new_labels = labels if rows is None else labels[rows]
            change = torch.nonzero(new_labels != old_labels)[:, 0]
            moved = len(change)
            if moved > n * RESUM_FRACTION:
                sums, counts = _cluster_sums(X, labels, k)
            elif moved:
                points = change if rows is None else rows[change]
                part = X[points].double()
                sums.index_add_(0, old_labels[change], -part)
                sums.index_add_(0, new_labels[change], part)
                counts += torch.bincount(new_labels[change], minlength=k).double()
                counts -= torch.bincount(old_labels[change], minlength=k).double()
        if settled or (moved <= label_tol * n and not bool((counts == 0).any())):
            break
    C = (sums / counts.clamp(min=1)[:, None]).to(X.dtype)
    empty = counts == 0
    if bool(empty.any()):
        C[empty] = centers.to(X.dtype)[empty]
    # with centres at the means: sum |x - c|^2 = sum |x|^2 - sum_j |sum_j|^2 / n_j
    inertia = max(total_sq - float(((sums * sums).sum(1) / counts.clamp(min=1)).sum()), 0.0)
    return LloydResult(labels=labels, centers=C, inertia=inertia, n_iter=n_iter, recomputed=recomputed)

"""k-nearest-neighbour graphs that scale: exact by blocks, or approximate through cells.

* exact: blocks of rows against all rows, one matrix product and a top-k each
  (``O(n^2 d)`` work, ``O(block x n)`` memory);
* approximate: PCA to ``pca_dim`` dimensions (fitted on a sample), a coarse k-means
  partition into about ``sqrt(n)`` cells, then for each cell one exact product
  between its points and the points of its ``n_probe`` nearest cells (an IVF index
  probed per cell rather than per point, so that every search is a dense product).
  Work is ``O(n * n_probe * n / cells * pca_dim)``, memory linear in ``n``.

Both return, for every point, its ``n_neighbors`` nearest other points (a point is
never its own neighbour, even when duplicated) and their Euclidean distances.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from deepclust.cluster._lloyd import (
    CHUNK_ROWS,
    kmeans_plusplus,
    lloyd,
    nearest_centers,
    row_norms_sq,
    squared_distances,
)
from deepclust.validation import as_generator

#: Largest n for which ``method="auto"`` computes exact neighbours.
EXACT_MAX_SAMPLES = 12_000
_BLOCK = 2048
#: Largest query x candidate product of the approximate search (float32 entries: 64 MiB).
MAX_PRODUCT = 2**24


def knn_graph(X, n_neighbors: int, method: str = "auto", pca_dim: int = 128, n_probe: int = 8,
              random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_neighbors`` nearest other rows of every row of ``X``.

    Parameters
    ----------
    X : array or Tensor of shape (n, d)
    n_neighbors : int
        Must be < n.
    method : {"auto", "exact", "approximate"}
        ``auto``: exact up to ``EXACT_MAX_SAMPLES`` rows, approximate above.
    pca_dim : int
        Approximate only: dimensions kept by PCA (no PCA when d <= pca_dim).
    n_probe : int
        Approximate only: cells searched around each point's own cell.
    random_state : int, numpy Generator or None

    Returns
    -------
    indices : ndarray of shape (n, n_neighbors), int64
    distances : ndarray of shape (n, n_neighbors), float32, ascending per row
    """

    Xt = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32)) if not torch.is_tensor(X) else X.float()
    n = Xt.shape[0]
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_SAMPLES else "approximate"
    if method == "exact":
        idx, dist = _exact_self_knn(Xt, n_neighbors)
    else:
        idx, dist = _cell_knn(Xt, n_neighbors, pca_dim, n_probe, as_generator(random_state))
    return idx.numpy(), dist.numpy()


def _exact_self_knn(X: torch.Tensor, n_neighbors: int):
    """Exact neighbours of every row of X among the other rows, computing each block pair once.

    Distances are symmetric, so the product of row blocks I and J (J > I) serves the rows
    of both: about half the work of querying every row against all rows.
    """
    n = X.shape[0]
    x_sq = row_norms_sq(X)
    best_d = torch.full((n, n_neighbors), math.inf)
    best_i = torch.zeros((n, n_neighbors), dtype=torch.long)

    def merge(rows: slice, D: torch.Tensor, offset: int) -> None:
        cand_d = torch.cat([best_d[rows], D], 1)
        d, j = cand_d.topk(n_neighbors, dim=1, largest=False)
        from_block = j >= n_neighbors
        ids = torch.where(from_block, j - n_neighbors + offset, best_i[rows].gather(1, j.clamp(max=n_neighbors - 1)))
        best_d[rows], best_i[rows] = d, ids

    starts = list(range(0, n, _BLOCK))
    for a in starts:
        rows_a = slice(a, min(a + _BLOCK, n))
        for b in starts:
            if b < a:
                continue
            rows_b = slice(b, min(b + _BLOCK, n))
            D = squared_distances(X[rows_a], X[rows_b], x_sq[rows_a], x_sq[rows_b])
            if a == b:
                D.fill_diagonal_(math.inf)  # a point is not its own neighbour
                merge(rows_a, D, b)
            else:
                merge(rows_a, D, b)
                merge(rows_b, D.T, a)
    return best_i, best_d.sqrt_()


def pca_project(X: torch.Tensor, n_components: int, rng: np.random.Generator, sample_size: int = 20_000) -> torch.Tensor:
    """Rows of ``X`` (n, d) projected on the ``n_components`` principal axes of a sample."""
    n, d = X.shape
    if d <= n_components:
        return X
    rows = torch.from_numpy(np.sort(rng.choice(n, size=min(n, sample_size), replace=False)))
    sample = X[rows].double()
    mean = sample.mean(0)
    # eigenvectors of the d x d covariance: cheaper than an SVD of the sample for d << sample
    cov = (sample - mean).T @ (sample - mean)
    _, vecs = torch.linalg.eigh(cov)
    axes = vecs[:, -n_components:].flip(1).to(X.dtype).contiguous()
    out = torch.empty((n, n_components), dtype=X.dtype)
    shift = (mean.to(X.dtype) @ axes)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        out[start:stop] = X[start:stop] @ axes - shift
    return out


def _cell_knn(X: torch.Tensor, n_neighbors: int, pca_dim: int, n_probe: int, rng: np.random.Generator):
    n = X.shape[0]
    Z = pca_project(X, pca_dim, rng)
    n_cells = max(1, int(round(math.sqrt(n))))
    n_probe = min(n_probe, n_cells)
    sample = torch.from_numpy(np.sort(rng.choice(n, size=min(n, 64 * n_cells), replace=False)))
    centres = kmeans_plusplus(Z[sample], n_cells, rng, sample_size=min(len(sample), 16 * n_cells))
    centres = lloyd(Z[sample], centres, max_iter=20).centers
    cell = nearest_centers(Z, centres)
    order = torch.argsort(cell, stable=True)
    bounds = torch.zeros(n_cells + 1, dtype=torch.long)
    bounds[1:] = torch.cumsum(torch.bincount(cell, minlength=n_cells), 0)
    probes = squared_distances(centres, centres).topk(n_probe, dim=1, largest=False).indices
    indices = torch.empty((n, n_neighbors), dtype=torch.long)
    distances = torch.empty((n, n_neighbors), dtype=torch.float32)
    Zs = Z[order]  # points grouped by cell
    for c in range(n_cells):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if hi == lo:
            continue
        candidates = torch.cat([torch.arange(int(bounds[p]), int(bounds[p + 1])) for p in probes[c].tolist()])
        if len(candidates) <= n_neighbors:  # tiny cells: widen to everything
            candidates = torch.arange(n)
        C = Zs[candidates]
        c_sq = row_norms_sq(C)
        own = torch.nonzero((candidates >= lo) & (candidates < hi))[:, 0]  # the queries sit among them
        # queries in blocks: a dense region makes big cells with big neighbours, and one
        # cell x candidates product would then take gigabytes
        step = max(1, MAX_PRODUCT // len(candidates))
        for q_lo in range(lo, hi, step):
            q_hi = min(q_lo + step, hi)
            D = squared_distances(Zs[q_lo:q_hi], C, c_sq=c_sq)
            mine = own[(candidates[own] >= q_lo) & (candidates[own] < q_hi)]
            D[candidates[mine] - q_lo, mine] = math.inf
            d, j = D.topk(min(n_neighbors, len(candidates) - 1), dim=1, largest=False)
            if j.shape[1] < n_neighbors:
                pad = n_neighbors - j.shape[1]
                j = torch.cat([j, j[:, :1].expand(-1, pad)], 1)
                d = torch.cat([d, d[:, :1].expand(-1, pad)], 1)
            indices[order[q_lo:q_hi]] = order[candidates[j]]
            distances[order[q_lo:q_hi]] = d.sqrt_()
    return indices, distances


def affinity_matrix(indices: np.ndarray, distances: np.ndarray, kind: str = "connectivity",
                    scale_neighbor: int = 7) -> sp.csr_matrix:
    """Symmetric sparse affinity (n, n) of a k-NN graph.

    Parameters
    ----------
    indices, distances : ndarray of shape (n, n_neighbors)
        From :func:`knn_graph`.
    kind : {"connectivity", "local_scaling"}
        ``connectivity``: ``0.5 * (A + A.T)`` of the 0/1 k-NN matrix ``A``, as
        scikit-learn's ``affinity="nearest_neighbors"``. ``local_scaling``: the same
        graph weighted by ``exp(-d_ij^2 / (s_i s_j))``, with ``s_i`` the distance of
        ``i`` to its ``scale_neighbor``-th neighbour (Zelnik-Manor & Perona, 2004).
    """
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k)
    if kind == "connectivity":
        values = np.ones(n * k, dtype=np.float32)
    else:
        scale = distances[:, min(scale_neighbor, k) - 1].astype(np.float64)
        scale = np.maximum(scale, max(float(scale[scale > 0].min()) if (scale > 0).any() else 1.0, 1e-12) * 1e-3)
        d2 = distances.astype(np.float64).ravel() ** 2
        values = np.exp(-d2 / (scale[rows] * scale[indices.ravel()])).astype(np.float32)
    A = sp.csr_matrix((values, (rows, indices.ravel())), shape=(n, n))
    return ((A + A.T) * 0.5).tocsr()

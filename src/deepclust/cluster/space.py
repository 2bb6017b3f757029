"""The space a run clusters, and the clusterer it uses, as every job builds them.

``cluster``, ``evaluate``, ``predict``, the report and the fine-tuning's validation all
cluster the same way: the embeddings L2-normalised (or not), a clusterer made by name with
its parameters checked, distances to the cluster means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepclust.cluster._registry import (
    create_clusterer,
    get_clusterer_class,
    takes_n_clusters,
)
from deepclust.errors import DeepclustError


def prepare_features(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """The space that is clustered: embeddings, L2-normalised when ``normalize``."""
    X = np.asarray(vectors, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.maximum(norms, 1e-12)
    return X


def make_clusterer(algorithm: str, n_clusters: int | None, seed: int, params: dict | None = None,
                   device: str | None = None):
    """The clusterer a run uses, so ``evaluate`` repeats exactly what ``cluster`` did.

    ``n_clusters`` is passed only to algorithms that take it (density methods find
    their own); ``params`` are further parameters of the algorithm, checked by name;
    ``device`` goes to the algorithms that can compute on a GPU, unless ``params`` says.
    """
    cls = get_clusterer_class(algorithm)
    known = set(cls._get_param_names()) - {"n_clusters", "random_state"}
    params = dict(params or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise DeepclustError(
            f"{algorithm} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(sorted(known))}"
        )
    if takes_n_clusters(algorithm):
        params["n_clusters"] = n_clusters
    if device is not None and "device" in known:
        params.setdefault("device", str(device))
    return create_clusterer(algorithm, random_state=seed, **params)


def cluster_centres(X: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, centres): the sorted cluster ids (noise ``-1`` has no centre) and the float64
    mean of the rows of ``X`` in each."""
    member = clusters >= 0
    ids, inverse = np.unique(clusters[member], return_inverse=True)
    sums, counts = cluster_sums(X[member], inverse, len(ids))
    return ids, sums / counts[:, None]


def centre_margins(X: np.ndarray, clusters: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Each image's confidence in its cluster: the distance to the nearest *other* cluster's
    centre minus the distance to its own, shape (n,). Large: well inside its cluster; near 0:
    as close to another; negative: closer to another cluster's centre (spectral and density
    clusters need not be convex). NaN for noise and where there is one cluster."""
    margins = np.full(len(clusters), np.nan)
    member = np.flatnonzero(clusters >= 0)
    ids, centres = cluster_centres(X, clusters) if len(member) else (np.array([]), None)
    if len(ids) < 2:
        return margins
    squares = (centres ** 2).sum(1)
    for start in range(0, len(member), chunk):
        rows = member[start:start + chunk]
        Xr = np.asarray(X[rows], dtype=np.float64)
        d = np.sqrt(np.maximum((Xr ** 2).sum(1)[:, None] - 2 * Xr @ centres.T + squares[None, :], 0))
        own = np.searchsorted(ids, clusters[rows])
        d_own = d[np.arange(len(rows)), own]
        d[np.arange(len(rows)), own] = np.inf
        margins[rows] = d.min(1) - d_own
    return margins


def distances_to_centres(X: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of ``X`` to the mean of its cluster, shape (n,).

    Noise (cluster ``-1`` of the density methods) has no centre: its distance is NaN.
    """
    distances = np.full(len(clusters), np.nan)
    member = clusters >= 0
    if not member.any():
        return distances
    ids, centres = cluster_centres(X, clusters)
    distances[member] = np.linalg.norm(X[member] - centres[np.searchsorted(ids, clusters[member])], axis=1)
    return distances


def check_n_clusters(n_clusters: Any, n_images: int | None = None) -> int | str | None:
    """Validate ``--n-clusters``: ``"auto"`` or a positive integer no larger than the number of images."""
    if n_clusters is None:
        return None
    if isinstance(n_clusters, str):
        if n_clusters.strip().lower() == "auto":
            return "auto"
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            raise DeepclustError(f"n_clusters={n_clusters!r} must be a positive integer") from None
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise DeepclustError(f"n_clusters={n_clusters!r} must be a positive integer")
    if n_images is not None and n_clusters > n_images:
        raise DeepclustError(
            f"n_clusters={n_clusters} must be <= the number of images ({n_images}); ask for fewer clusters"
        )
    return int(n_clusters)


def cluster_sums(X: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 sum of the rows of ``X`` in each of clusters ``0..k-1`` (k, d) and their
    counts (k,), as one sparse product (np.add.at took 0.38 s per 65,536 x 128 block,
    this 0.05 s; and it needs no torch, so neither do the clustering tasks)."""
    import scipy.sparse as sp

    member = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    return np.asarray(member @ X.astype(np.float64)), np.bincount(labels, minlength=k).astype(np.int64)


def nearest_centres(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``centres`` (k, d) for every row of ``X`` (n, d), as the
    k-means of :mod:`deepclust.cluster.kmeans` assigns (exact, in row chunks)."""
    import torch  # deferred: the at-scale tasks that import this module never assign this way

    from deepclust.cluster._lloyd import nearest_centers  # deferred with torch

    return nearest_centers(torch.from_numpy(np.asarray(X)), torch.from_numpy(np.asarray(centres))).numpy()


def nearest_member_distance(members: np.ndarray, queries: np.ndarray, self_index: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance from each query to its nearest member (exact, faiss); with
    ``self_index`` the queries are members ``members[self_index]`` and skip themselves."""
    import faiss

    index = faiss.IndexFlatL2(members.shape[1])
    index.add(np.ascontiguousarray(members, dtype=np.float32))
    k = 1 if self_index is None else min(2, len(members))
    d2, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    if self_index is None:
        return np.sqrt(np.maximum(d2[:, 0], 0))
    other = np.where(idx[:, 0] == self_index, 1, 0)  # a duplicate of the query may come first: both are 0 away
    return np.sqrt(np.maximum(d2[np.arange(len(d2)), np.minimum(other, k - 1)], 0))


def isolated_images(X: np.ndarray, fence: float = 1.5) -> np.ndarray:
    """Which rows of ``X`` are far from every other, shape (n,) bool: those whose distance to
    their nearest other row lies above the upper Tukey fence, ``Q3 + fence * (Q3 - Q1)``, of
    that distance over all rows (the run's own distances set the threshold, as ``predict``'s
    far flag; the fence, not a quantile, so that a collection without outliers loses none)."""
    if len(X) < 4:
        return np.zeros(len(X), dtype=bool)
    nearest = nearest_member_distance(X, X, self_index=np.arange(len(X)))
    q1, q3 = np.quantile(nearest, [0.25, 0.75])
    return nearest > q3 + fence * (q3 - q1)

"""Estimating the number of clusters: the eigengap heuristic, the silhouette curve, and a
learned C2M metric.

>>> est = estimate_n_clusters(X, method="eigengap", k_max=30)   # doctest: +SKIP
>>> est.n_clusters, est.curve()                                  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from deepclust.cluster._registry import set_k_estimator
from deepclust.cluster.k_curve import KEstimate, eigengap
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster.spectral import knn_affinity, top_eigenvectors
from deepclust.errors import DeepclustError
from deepclust.validation import as_generator, as_seed, check_choice, check_int

K_METHODS = ("eigengap", "silhouette", "c2m")


def _kmeans_ks(k_min: int, k_max: int, n: int, what: str) -> np.ndarray:
    """The k tried by the criteria that score k-means clusterings: 2 <= k <= n - 1."""
    ks = np.arange(max(k_min, 2), min(k_max, n - 1) + 1)
    if len(ks) == 0:
        raise DeepclustError(f"{what} needs 2 <= k <= n_samples - 1; got k_min={k_min}, k_max={k_max}")
    return ks


def estimate_n_clusters(X, method: str = "eigengap", k_min: int = 2, k_max: int | None = None,
                        sample_size: int | None = 5000, n_neighbors: int = 10, random_state=None,
                        metric=None) -> KEstimate:
    """Estimate the number of clusters of ``X`` (n, d).

    Parameters
    ----------
    method : {"eigengap", "silhouette"}
        ``eigengap``: the k with the largest gap between the k-th and (k+1)-th
        eigenvalue of the normalised k-NN affinity (von Luxburg, 2007, sec. 8.3).
        ``silhouette``: the k whose k-means clustering has the largest mean silhouette
        (Rousseeuw, 1987). ``c2m``: the k whose k-means clustering a learned C2M metric
        (``metric``) scores highest: label-free model selection by what labelled datasets
        taught it a good clustering looks like.
    k_min, k_max : int
        Range of candidates; ``k_max`` defaults to ``min(50, n - 1)``.
    sample_size : int or None
        Silhouette only: above this many rows, a random sample of that size is clustered
        and scored (silhouette costs ``O(n^2)``). None uses every row.
    n_neighbors : int
        Eigengap only: neighbours of the affinity graph.
    metric : C2M, path or None
        c2m only: the learned metric (a fitted :class:`deepclust.methods.C2M` or the path
        of one it saved).
    random_state : int, numpy Generator or None

    Returns
    -------
    KEstimate
    """
    check_choice("method", method, K_METHODS)
    X = np.asarray(X)
    n = X.shape[0]
    if n < 3:
        raise DeepclustError(f"estimating the number of clusters needs at least 3 samples; got {n}")
    k_max = min(50, n - 1) if k_max is None else k_max
    check_int("k_min", k_min, 1)
    check_int("k_max", k_max, k_min)
    if k_max > n - 1:
        raise DeepclustError(f"k_max={k_max} must be <= n_samples - 1 = {n - 1}; ask for fewer clusters")
    check_int("sample_size", sample_size, 10, optional=True)
    rng = as_generator(random_state)
    if method == "eigengap":
        S = knn_affinity(X, min(n_neighbors, n - 1), random_state=rng)
        values, _ = top_eigenvectors(S, min(k_max + 1, n), random_state=rng)
        ks, scores = eigengap(values, k_min, k_max)
    elif method == "c2m":
        from deepclust.cluster.learned import load_metric  # deferred: the learned metric needs torch

        model = load_metric(metric, random_state=as_seed(random_state))
        ks = _kmeans_ks(k_min, k_max, n, "c2m")
        scores = np.array(model.score_many(
            X, [KMeans(n_clusters=int(k), n_init=3, random_state=rng).fit_predict(X) for k in ks]))
    else:
        from sklearn.metrics import silhouette_score

        if sample_size is not None and n > sample_size:
            X = X[np.sort(rng.choice(n, size=sample_size, replace=False))]
        ks = _kmeans_ks(k_min, k_max, X.shape[0], "the silhouette")
        scores = np.array([
            silhouette_score(X, KMeans(n_clusters=int(k), n_init=3, random_state=rng).fit_predict(X))
            for k in ks
        ])
    return KEstimate(n_clusters=int(ks[int(np.argmax(scores))]), method=method, ks=ks, scores=scores)


set_k_estimator(estimate_n_clusters)  # n_clusters="auto" of every clusterer estimates with it

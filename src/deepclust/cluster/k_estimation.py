"""Estimating the number of clusters: the eigengap heuristic, the silhouette curve, a
learned C2M metric, and the labels a user has (Generalized Category Discovery's k).

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

K_METHODS = ("eigengap", "silhouette", "c2m", "labels", "generalization", "stability")
#: Above this many candidate ks, the label-free selection criteria search a coarse grid first.
COARSE_ABOVE = 60
#: Scores within this of the best count as tied (method="labels").
PLATEAU = 0.01


def _kmeans_ks(k_min: int, k_max: int, n: int, what: str) -> np.ndarray:
    """The k tried by the criteria that score k-means clusterings: 2 <= k <= n - 1."""
    ks = np.arange(max(k_min, 2), min(k_max, n - 1) + 1)
    if len(ks) == 0:
        raise DeepclustError(f"{what} needs 2 <= k <= n_samples - 1; got k_min={k_min}, k_max={k_max}")
    return ks


def estimate_n_clusters(X, method: str = "eigengap", k_min: int = 2, k_max: int | None = None,
                        sample_size: int | None = 5000, n_neighbors: int = 10, random_state=None,
                        metric=None, labels=None, algorithm: str = "kmeans", progress=None) -> KEstimate:
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
    labels : sequence or None
        labels only: a class per row of ``X``, None (or -1 for integer classes) where
        unknown. The k whose k-means clustering of all of ``X`` recovers the labelled rows
        best (Hungarian accuracy on them, as Vaze et al., CVPR 2022, choose k for
        Generalized Category Discovery), searched on a coarse grid then refined around the
        best (about 2 sqrt(k_max - k_min) clusterings instead of one per k); where several
        neighbouring k score alike (within ``PLATEAU``), the middle one.
        ``generalization`` and ``stability``: the criteria of :mod:`deepclust.selection`,
        scoring the clusterings ``algorithm`` makes (every k up to ``COARSE_ABOVE``
        candidates, else a coarse grid, then every k around its best).
    algorithm : str
        generalization and stability only: the clusterer whose clusterings are scored.
    progress : callable or None
        generalization and stability only: ``progress(what, done, total)`` per clustering.
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
    chosen = None  # the criteria that pick other than the best score say which
    if method == "eigengap":
        S = knn_affinity(X, min(n_neighbors, n - 1), random_state=rng)
        values, _ = top_eigenvectors(S, min(k_max + 1, n), random_state=rng)
        ks, scores = eigengap(values, k_min, k_max)
    elif method == "labels":
        ks, scores, chosen = _k_from_labels(X, labels, k_min, k_max, rng)
    elif method in ("generalization", "stability"):
        ks, scores = _k_by_selection(X, method, _kmeans_ks(k_min, k_max, n, method), algorithm, metric,
                                     as_seed(random_state), progress)
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
    if chosen is None:
        chosen = int(ks[int(np.argmax(scores))])
    return KEstimate(n_clusters=chosen, method=method, ks=ks, scores=scores)


def _k_by_selection(X: np.ndarray, criterion: str, ks: np.ndarray, algorithm: str, metric, seed: int,
                    progress) -> tuple[np.ndarray, np.ndarray]:
    from deepclust.selection import select  # deferred: the selection scores clusterings of this package

    def scored(candidates) -> dict[int, float]:
        return {c.k: c.scores[criterion] for c in select(X, candidates, [algorithm], criteria=[criterion], seed=seed,
                                                          metric=metric, progress=progress).candidates}

    step = 1 if len(ks) <= COARSE_ABOVE else int(np.ceil(len(ks) / (COARSE_ABOVE // 2)))
    tried = _coarse_to_fine(ks, step, scored)
    found = np.array(sorted(tried))
    return found, np.array([tried[k] for k in found])


def _coarse_to_fine(ks: np.ndarray, step: int, scored) -> dict[int, float]:
    """Score every ``step``-th of the consecutive ``ks``, then every k within a step of the
    best; ``scored(list of k)`` returns {k: score}. Returns every k tried with its score."""
    tried = dict(scored([int(k) for k in ks[::step]]))
    best = max(tried, key=tried.get)
    around = [k for k in range(best - step + 1, best + step) if int(ks[0]) <= k <= int(ks[-1]) and k not in tried]
    if around:
        tried.update(scored(around))
    return tried


def _k_from_labels(X: np.ndarray, labels, k_min: int, k_max: int, rng) -> tuple[np.ndarray, np.ndarray, int]:
    from deepclust.metrics import matched_accuracy  # deferred: scikit-learn's metrics, only here

    if labels is None or len(labels) != len(X):
        raise DeepclustError("method='labels' needs labels: one class per row of X, None or -1 where unknown")
    labels = np.asarray(labels, dtype=object)
    known = np.array([v is not None and not (isinstance(v, (int, np.integer)) and v == -1) for v in labels])
    if len(set(labels[known].tolist())) < 2:
        raise DeepclustError("method='labels' needs labelled rows of at least 2 classes")
    def scored(many: list[int]) -> dict[int, float]:
        return {k: matched_accuracy(labels[known].astype(str),
                                    KMeans(n_clusters=k, n_init=3, random_state=rng).fit_predict(X)[known]) for k in many}

    ks = _kmeans_ks(k_min, k_max, len(X), "labels")
    tried = _coarse_to_fine(ks, max(1, int(np.sqrt(len(ks)))), scored)
    found_ks = np.array(sorted(tried))
    scores = np.array([tried[k] for k in found_ks])
    # k-means may merge or split unlabelled classes without touching the labelled ones, so the
    # score is flat over a range of k around the truth: take the middle of the best plateau
    top = scores >= scores.max() - PLATEAU
    i = int(np.argmax(scores))
    lo, hi = i, i
    while lo > 0 and top[lo - 1] and found_ks[lo - 1] == found_ks[lo] - 1:
        lo -= 1
    while hi < len(found_ks) - 1 and top[hi + 1] and found_ks[hi + 1] == found_ks[hi] + 1:
        hi += 1
    return found_ks, scores, int(found_ks[(lo + hi) // 2])


set_k_estimator(estimate_n_clusters)  # n_clusters="auto" of every clusterer estimates with it

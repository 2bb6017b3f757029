"""K-means that honours what a user said: groups of images known to be of one class stay
together in a cluster of their own, and pairs known to differ are never put together.

This is constrained k-means (Basu, Banerjee and Mooney, ICML 2002: the seeds' clusters are
fixed, each seed group starts its centre) with cannot-link pairs enforced in the
assignment step (as COP-k-means, Wagstaff et al., ICML 2001, but never failing: an image
that cannot go to its nearest centre goes to the nearest it may join). Neither scikit-learn
nor faiss has it.
"""

from __future__ import annotations

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.validation import check_int


class ConstrainedKMeans:
    """K-means with must-link groups and cannot-link pairs.

    Parameters
    ----------
    n_clusters : int
        Clusters to make; raised to the number of groups when there are more.
    n_init : int
        Random starts of the free centres; the lowest within-cluster scatter wins.
    max_iter : int
    random_state : int, Generator or None

    Attributes (after ``fit_predict``)
    ----------------------------------
    labels_ : int ndarray of shape (n,)
        Group ``g``'s images are in cluster ``g``; the other clusters follow.
    cluster_centers_ : ndarray of shape (n_clusters_, d)
    n_clusters_ : int
    inertia_ : float
    """

    def __init__(self, n_clusters: int, n_init: int = 5, max_iter: int = 100, random_state=None):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def check_params(self) -> None:
        check_int("n_clusters", self.n_clusters, 1)
        check_int("n_init", self.n_init, 1)
        check_int("max_iter", self.max_iter, 1)

    def fit_predict(self, X, group=None, cannot=()) -> np.ndarray:
        """Cluster ``X`` (n, d). ``group[i]`` is image i's known group (0, 1, ...), or -1;
        ``cannot`` lists pairs (i, j) of images of different classes."""
        self.check_params()
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        group = np.full(n, -1, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
        if group.shape != (n,):
            raise DeepclustError(f"group must hold one entry per image ({n}); got shape {group.shape}")
        n_groups = int(group.max()) + 1 if n else 0
        k = max(self.n_clusters, n_groups)
        if k > n:
            raise DeepclustError(f"n_clusters={k} must be <= the number of images ({n})")
        forbidden = _forbidden(group, cannot, n)
        rng = np.random.default_rng(self.random_state)
        best = None
        for _ in range(self.n_init):
            labels, centres, inertia = self._run(X, group, n_groups, k, forbidden, cannot, rng)
            if best is None or inertia < best[2]:
                best = (labels, centres, inertia)
        self.labels_, self.cluster_centers_, self.inertia_ = best
        self.n_clusters_ = k
        return self.labels_

    def _run(self, X, group, n_groups, k, forbidden, cannot, rng):
        free = np.flatnonzero(group < 0)
        centres = np.empty((k, X.shape[1]))
        for g in range(n_groups):
            centres[g] = X[group == g].mean(axis=0)
        centres[n_groups:] = _plus_plus(X[free] if len(free) else X, centres[:n_groups], k - n_groups, rng)
        labels = np.full(len(X), -1, dtype=np.int64)
        for _ in range(self.max_iter):
            new = _assign(X, centres, group, forbidden, cannot)
            for c in range(k):  # an empty cluster restarts at the free image farthest from its centre
                if not (new == c).any() and len(free):
                    far = free[np.argmax(((X[free] - centres[new[free]]) ** 2).sum(1))]
                    new[far] = c
            if np.array_equal(new, labels):
                break
            labels = new
            for c in range(k):
                centres[c] = X[labels == c].mean(axis=0)
        inertia = float(((X - centres[labels]) ** 2).sum())
        return labels, centres, inertia


def _forbidden(group: np.ndarray, cannot, n: int) -> dict[int, set[int]]:
    """For each free image, the groups' clusters it may not join (it differs from one of their images)."""
    out: dict[int, set[int]] = {}
    for i, j in cannot:
        if not (0 <= i < n and 0 <= j < n):
            raise DeepclustError(f"cannot-link pair ({i}, {j}) names an image outside 0..{n - 1}")
        if group[i] >= 0 and group[i] == group[j]:
            raise DeepclustError(f"images {i} and {j} are in one group and in a cannot-link pair")
        if group[i] < 0 and group[j] >= 0:
            out.setdefault(i, set()).add(int(group[j]))
        if group[j] < 0 and group[i] >= 0:
            out.setdefault(j, set()).add(int(group[i]))
    return out


def _assign(X, centres, group, forbidden, cannot) -> np.ndarray:
    """Nearest allowed centre for every image; groups stay in their clusters."""
    d = _sq_distances(X, centres)
    for i, clusters in forbidden.items():
        d[i, list(clusters)] = np.inf
    labels = np.where(group >= 0, group, d.argmin(1))
    for _ in range(len(cannot)):  # free pairs put together: the one that loses less moves on
        moved = False
        for i, j in cannot:
            if labels[i] != labels[j]:
                continue
            c = labels[i]
            options = [m for m in (i, j) if group[m] < 0]
            if not options:
                continue
            costs = []
            for m in options:
                row = d[m].copy()
                row[c] = np.inf
                row[[labels[o] for o in _partners(m, cannot)]] = np.inf
                costs.append((row.min() - d[m, c], m, int(row.argmin())))
            cost, m, target = min(costs)
            if np.isfinite(cost):
                labels[m] = target
                moved = True
        if not moved:
            break
    return labels


def _partners(m: int, cannot) -> list[int]:
    return [j if i == m else i for i, j in cannot if m in (i, j)]


def _plus_plus(X: np.ndarray, fixed: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` further centres by k-means++ sampling from ``X``, given the ``fixed`` ones."""
    chosen = []
    nearest = _sq_distances(X, fixed).min(1) if len(fixed) else np.full(len(X), np.inf)
    for _ in range(count):
        if np.isinf(nearest).all() or nearest.sum() <= 0:
            c = X[rng.integers(len(X))]
        else:
            c = X[rng.choice(len(X), p=nearest / nearest.sum())]
        chosen.append(c)
        nearest = np.minimum(nearest, ((X - c) ** 2).sum(1))
    return np.array(chosen).reshape(count, X.shape[1])


def _sq_distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.maximum((X ** 2).sum(1)[:, None] - 2 * X @ C.T + (C ** 2).sum(1)[None, :], 0.0)

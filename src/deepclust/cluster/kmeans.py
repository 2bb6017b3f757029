"""K-means with k-means++ initialisation (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans as _SkKMeans

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer


@register_clusterer("kmeans")
class KMeans(BaseClusterer):
    """K-means (MacQueen, 1967) with k-means++ seeding and several restarts.

    Parameters
    ----------
    n_clusters : int, default 8
    n_init : int, default 10
        Restarts from different seeds; the run with the lowest inertia is kept.
    max_iter : int, default 300
    random_state : int, numpy Generator or None

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
    n_clusters_ : int
    inertia_ : float
    """

    def __init__(self, n_clusters=8, n_init=10, max_iter=300, random_state=None):
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y=None):
        X = self._validate_data(X)
        km = _SkKMeans(
            n_clusters=int(self.n_clusters),
            init="k-means++",
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=_as_seed(self.random_state),
        ).fit(X)
        self.labels_ = km.labels_.astype(np.int64)
        self.cluster_centers_ = km.cluster_centers_
        self.inertia_ = float(km.inertia_)
        self.n_clusters_ = int(self.n_clusters)
        self._estimator = km
        return self

    def predict(self, X):
        """Index of the nearest centre for each row of ``X`` (n_samples, n_features)."""
        return self._estimator.predict(np.asarray(X, dtype=self.cluster_centers_.dtype)).astype(np.int64)


def _as_seed(random_state):
    """scikit-learn takes an int or a RandomState; turn a numpy Generator into an int."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    return random_state

"""Density-based clustering: DBSCAN, OPTICS, HDBSCAN (scikit-learn). They find their own k.

Points in no dense region are noise, labelled ``-1``; ``n_clusters_`` counts the
clusters without noise and ``noise_fraction_`` says how much was left out.
"""

from __future__ import annotations

import numpy as np

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.validation import check_float, check_int


class _DensityClusterer(BaseClusterer):
    def _fit_model(self, X: np.ndarray, model, min_points: int = 1) -> "_DensityClusterer":
        """Fit a scikit-learn ``model``; with fewer than ``min_points`` samples all are noise."""
        if X.shape[0] < min_points:
            return self._finish(np.full(X.shape[0], -1))
        return self._finish(model.fit(X).labels_)

    def _finish(self, labels) -> "_DensityClusterer":
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.n_clusters_ = int(len(np.unique(self.labels_[self.labels_ >= 0])))
        self.noise_fraction_ = float(np.mean(self.labels_ < 0))
        return self


@register_clusterer("dbscan")
class DBSCAN(_DensityClusterer):
    """DBSCAN (Ester et al., 1996): clusters are regions with ``min_samples`` points within ``eps``.

    Parameters
    ----------
    eps : float, default 0.5
        Neighbourhood radius, in the units of the data (on L2-normalised embeddings,
        distances lie in [0, 2]).
    min_samples : int, default 5
    random_state : ignored (DBSCAN is deterministic); accepted for a uniform surface.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), -1 for noise
    n_clusters_ : int
    noise_fraction_ : float
    """

    def __init__(self, eps=0.5, min_samples=5, random_state=None):
        self.eps = eps
        self.min_samples = min_samples
        self.random_state = random_state

    def check_params(self):
        check_float("eps", self.eps, 0.0)
        check_int("min_samples", self.min_samples, 1)

    def fit(self, X, y=None):
        from sklearn.cluster import DBSCAN as SkDBSCAN

        X = self._validate_data(X)
        return self._fit_model(X, SkDBSCAN(eps=self.eps, min_samples=self.min_samples))


@register_clusterer("optics")
class OPTICS(_DensityClusterer):
    """OPTICS (Ankerst et al., 1999): DBSCAN over all radii at once, clusters cut by steepness ``xi``.

    Parameters
    ----------
    min_samples : int, default 5
    xi : float, default 0.05
    min_cluster_size : int or None, default None
    random_state : ignored; accepted for a uniform surface.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), -1 for noise
    n_clusters_ : int
    noise_fraction_ : float
    """

    def __init__(self, min_samples=5, xi=0.05, min_cluster_size=None, random_state=None):
        self.min_samples = min_samples
        self.xi = xi
        self.min_cluster_size = min_cluster_size
        self.random_state = random_state

    def check_params(self):
        check_int("min_samples", self.min_samples, 2)
        check_float("xi", self.xi, 0.0, 1.0)
        check_int("min_cluster_size", self.min_cluster_size, 2, optional=True)

    def fit(self, X, y=None):
        from sklearn.cluster import OPTICS as SkOPTICS

        X = self._validate_data(X)
        model = SkOPTICS(min_samples=self.min_samples, xi=self.xi, min_cluster_size=self.min_cluster_size)
        return self._fit_model(X, model, min_points=self.min_samples)


@register_clusterer("hdbscan")
class HDBSCAN(_DensityClusterer):
    """HDBSCAN (Campello, Moulavi & Sander, 2013): the most stable clusters of a density hierarchy.

    Parameters
    ----------
    min_cluster_size : int, default 5
    min_samples : int or None, default None (= min_cluster_size)
    cluster_selection_epsilon : float, default 0.0
    random_state : ignored; accepted for a uniform surface.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), -1 for noise
    n_clusters_ : int
    noise_fraction_ : float
    """

    def __init__(self, min_cluster_size=5, min_samples=None, cluster_selection_epsilon=0.0, random_state=None):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_epsilon = cluster_selection_epsilon
        self.random_state = random_state

    def check_params(self):
        check_int("min_cluster_size", self.min_cluster_size, 2)
        check_int("min_samples", self.min_samples, 1, optional=True)
        check_float("cluster_selection_epsilon", self.cluster_selection_epsilon, 0.0)

    def fit(self, X, y=None):
        from sklearn.cluster import HDBSCAN as SkHDBSCAN

        X = self._validate_data(X)
        model = SkHDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples,
                          cluster_selection_epsilon=self.cluster_selection_epsilon, copy=True)
        # scikit-learn needs more samples than min_samples (default: min_cluster_size)
        return self._fit_model(X, model, min_points=(self.min_samples or self.min_cluster_size) + 1)

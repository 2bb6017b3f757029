"""Gaussian mixture clustering (scikit-learn's EM) behind deepclust's surface."""

from __future__ import annotations

import numpy as np

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.validation import as_seed, check_choice, check_float, check_int

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


@register_clusterer("gmm")
class GaussianMixture(BaseClusterer):
    """A mixture of Gaussians fitted by EM (Dempster et al., 1977); a point's cluster is its most likely component.

    Wraps :class:`sklearn.mixture.GaussianMixture`, initialised from k-means.

    Parameters
    ----------
    n_clusters : int or "auto", default 8
        Number of components; ``"auto"``: the best silhouette over 2..50.
    covariance_type : {"full", "tied", "diag", "spherical"}, default "diag"
        ``diag`` by default: a full covariance per component has ``d^2`` parameters,
        too many for 1,000-d embeddings and a few hundred images per cluster.
    reg_covar : float, default 1e-6
        Added to the covariance diagonals, for stability.
    max_iter : int, default 100
    n_init : int, default 1
    random_state : int, numpy Generator or None

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
    means_ : ndarray of shape (n_clusters, n_features)
    """

    def __init__(self, n_clusters=8, covariance_type="diag", reg_covar=1e-6, max_iter=100, n_init=1,
                 random_state=None):
        self.n_clusters = n_clusters
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    def check_params(self):
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_float("reg_covar", self.reg_covar, 0.0)
        check_int("max_iter", self.max_iter, 1)
        check_int("n_init", self.n_init, 1)

    def fit(self, X, y=None):
        from sklearn.mixture import GaussianMixture as SkGaussianMixture

        X = self._validate_data(X)
        k = self._resolve_n_clusters(X)
        if X.shape[0] == 1:
            self.labels_ = np.zeros(1, dtype=np.int64)
            self.means_ = X.copy()
            self.n_clusters_ = 1
            self._estimator = None
            return self
        gm = SkGaussianMixture(n_components=k, covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                               max_iter=self.max_iter, n_init=self.n_init,
                               random_state=as_seed(self.random_state)).fit(X)
        self._estimator = gm
        self.means_ = gm.means_
        self.labels_ = gm.predict(X).astype(np.int64)
        self.n_clusters_ = k
        return self

    def predict(self, X):
        """Most likely component of each row of ``X`` (n_samples, n_features)."""
        X = self._validate_predict(X, self.means_)
        if self._estimator is None:
            return np.zeros(X.shape[0], dtype=np.int64)
        return self._estimator.predict(X).astype(np.int64)

    def predict_proba(self, X):
        """Posterior probability of each component, shape (n_samples, n_clusters)."""
        X = self._validate_predict(X, self.means_)
        if self._estimator is None:
            return np.ones((X.shape[0], 1))
        return self._estimator.predict_proba(X)

"""What every deepclust clusterer shares: scikit-learn's estimator contract and checks."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from deepclust.cluster._registry import k_estimator
from deepclust.errors import DeepclustError
from deepclust.validation import as_seed, check_int


class BaseClusterer(ClusterMixin, BaseEstimator):
    """Base of deepclust's clusterers.

    ``__init__`` only stores its arguments; ``fit(X)`` validates ``X`` of shape
    ``(n_samples, n_features)`` and sets ``labels_`` (shape ``(n_samples,)``, int64)
    and ``n_clusters_``. Estimators that take ``n_clusters`` also accept ``"auto"``:
    the number is then estimated by :func:`deepclust.cluster.estimate_n_clusters` with
    the class's ``k_method`` and the estimate is kept in ``k_estimate_``.
    """

    #: How ``n_clusters="auto"`` is estimated for this estimator.
    k_method = "silhouette"

    def check_params(self) -> None:
        """Check the parameters alone (no data), so that callers can fail before long work."""

    def _validate_data(self, X) -> np.ndarray:
        self.check_params()
        X = np.asarray(X)
        if X.ndim != 2:
            raise DeepclustError(f"X must be a 2-d array (n_samples, n_features); got shape {X.shape}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise DeepclustError(f"X has shape {X.shape}; it needs at least one sample and one feature")
        if not np.issubdtype(X.dtype, np.floating):
            if not (np.issubdtype(X.dtype, np.integer) or X.dtype == bool):
                raise DeepclustError(f"X must hold numbers; got dtype {X.dtype}")
            X = X.astype(np.float64)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        # one float64 sum is finite exactly when every value is (a NaN or an infinity carries
        # through it, and float64 cannot overflow on sums of float32); it reads the data once
        # where the element-wise test first writes a mask as large as a quarter of it
        with np.errstate(over="ignore", invalid="ignore"):
            total = X.sum(dtype=np.float64)
        if not np.isfinite(total) and not np.isfinite(X).all():
            bad = int((~np.isfinite(X)).any(axis=1).sum())
            raise DeepclustError(f"X contains NaN or infinite values in {bad} row(s); remove or repair those rows first")
        n_clusters = getattr(self, "n_clusters", None)
        if n_clusters is not None and not _is_auto(n_clusters):
            check_int("n_clusters", n_clusters, 1)
            if n_clusters > X.shape[0]:
                raise DeepclustError(
                    f"n_clusters={n_clusters} must be <= n_samples={X.shape[0]}; ask for fewer clusters"
                )
        return np.ascontiguousarray(X)

    def _resolve_n_clusters(self, X: np.ndarray) -> int:
        """The number of clusters to fit: ``n_clusters``, or estimated when it is ``"auto"``."""
        if not _is_auto(self.n_clusters):
            self.k_estimate_ = None
            return int(self.n_clusters)
        self.k_estimate_ = k_estimator()(X, method=self.k_method, random_state=as_seed(self.random_state))
        return self.k_estimate_.n_clusters

    def _validate_predict(self, X, centers: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != centers.shape[1]:
            raise DeepclustError(
                f"X must have shape (n_samples, {centers.shape[1]}) like the data this model was fitted on; got {X.shape}"
            )
        if not np.isfinite(X).all():
            raise DeepclustError("X contains NaN or infinite values; remove or repair those rows first")
        return np.ascontiguousarray(X, dtype=centers.dtype)


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"

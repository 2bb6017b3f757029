"""What every deepclust clusterer shares: scikit-learn's estimator contract and checks."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from deepclust.errors import DeepclustError


class BaseClusterer(ClusterMixin, BaseEstimator):
    """Base of deepclust's clusterers.

    ``__init__`` only stores its arguments; ``fit(X)`` validates ``X`` of shape
    ``(n_samples, n_features)`` and sets ``labels_`` (shape ``(n_samples,)``) and
    ``n_clusters_``.
    """

    def _validate_data(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise DeepclustError(f"X must be a 2-d array (n_samples, n_features); got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.floating):
            X = X.astype(np.float64)
        if not np.isfinite(X).all():
            raise DeepclustError("X contains NaN or infinite values; remove or repair those rows first")
        n_clusters = getattr(self, "n_clusters", None)
        if n_clusters is not None:
            if not isinstance(n_clusters, (int, np.integer)) or isinstance(n_clusters, bool) or n_clusters < 1:
                raise DeepclustError(f"n_clusters={n_clusters!r} must be a positive integer")
            if n_clusters > X.shape[0]:
                raise DeepclustError(
                    f"n_clusters={n_clusters} must be <= n_samples={X.shape[0]}; ask for fewer clusters"
                )
        return X

"""What every deepclust clusterer shares: scikit-learn's estimator contract and checks."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from deepclust.errors import DeepclustError


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

    def _check_params(self) -> None:
        """Check the parameters alone (no data), so that callers can fail before long work."""

    def _validate_data(self, X) -> np.ndarray:
        self._check_params()
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
        if not np.isfinite(X).all():
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
        from deepclust.cluster.k_estimation import estimate_n_clusters

        self.k_estimate_ = estimate_n_clusters(X, method=self.k_method, random_state=as_seed(self.random_state))
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


def check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    """Raise ``<name>=<value> must be an integer >= <minimum>`` unless it is one."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DeepclustError(f"{name}={value!r} must be an integer >= {minimum}" + (" or None" if optional else ""))


def check_float(name: str, value, low: float, high: float | None = None, optional: bool = False) -> None:
    """Raise ``<name>=<value> must be a number in [low, high]`` unless it is one."""
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise DeepclustError(f"{name}={value!r} must be a number {span}")


def check_choice(name: str, value, choices) -> str:
    """Raise ``<name>=<value> is not one of ...`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DeepclustError(f"{name}={value!r} is not known; choose one of: {', '.join(map(str, choices))}")
    return value


def as_generator(random_state) -> np.random.Generator:
    """A numpy Generator from an int, a Generator, a RandomState or None."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    return np.random.default_rng(random_state)


def as_seed(random_state):
    """scikit-learn takes an int or a RandomState; turn a numpy Generator into an int."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    return random_state

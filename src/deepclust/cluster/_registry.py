"""The registry of clustering algorithms: one name, one scikit-learn-style estimator."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from deepclust.errors import DeepclustError

_CLUSTERERS: dict[str, type] = {}

#: The modules whose estimators register themselves, imported on the first look-up (they load
#: torch and scikit-learn, which a task over a store's blocks does not need).
_MODULES = ("kmeans", "spectral", "mixture", "agglomerative", "density", "learned")


def _load_all() -> None:
    for module in _MODULES:  # a no-op for the modules already imported
        importlib.import_module(f"deepclust.cluster.{module}")


def register_clusterer(name: str) -> Callable[[type], type]:
    """Class decorator: make an estimator available to :func:`create_clusterer` as ``name``."""

    def wrap(cls: type) -> type:
        if name in _CLUSTERERS:
            raise ValueError(f"clusterer '{name}' is registered twice")
        _CLUSTERERS[name] = cls
        return cls

    return wrap


def list_clusterers() -> list[str]:
    """Names accepted by :func:`create_clusterer` (and ``--algorithm``)."""
    _load_all()
    return sorted(_CLUSTERERS)


def get_clusterer_class(name: str) -> type:
    """The estimator class registered as ``name``; an unknown name lists the valid ones."""
    _load_all()
    try:
        return _CLUSTERERS[name.lower()]
    except KeyError:
        raise DeepclustError(
            f"unknown clustering algorithm '{name}'; choose one of: {', '.join(list_clusterers())}"
        ) from None


def create_clusterer(name: str, **params: Any):
    """Build a clustering estimator by name, e.g. ``create_clusterer("kmeans", n_clusters=10)``."""
    return get_clusterer_class(name)(**params)


def takes_n_clusters(name: str) -> bool:
    """Whether the algorithm is told its number of clusters (density methods find their own)."""
    return "n_clusters" in get_clusterer_class(name)._get_param_names()


_K_ESTIMATOR: list[Callable] = []


def set_k_estimator(estimate: Callable) -> None:
    """Register the function that estimates k for ``n_clusters="auto"``
    (:func:`deepclust.cluster.k_estimation.estimate_n_clusters`, which itself clusters with
    the estimators: registering it here keeps the base class below them)."""
    _K_ESTIMATOR[:] = [estimate]


def k_estimator() -> Callable:
    """The function registered by :func:`set_k_estimator`."""
    if not _K_ESTIMATOR:
        importlib.import_module("deepclust.cluster.k_estimation")  # registers itself; it imports the clusterers
    return _K_ESTIMATOR[0]

"""Clustering algorithms behind one scikit-learn-style surface and a registry by name.

>>> from deepclust.cluster import create_clusterer
>>> labels = create_clusterer("kmeans", n_clusters=5, random_state=0).fit_predict(X)  # doctest: +SKIP
"""

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import (
    create_clusterer,
    get_clusterer_class,
    list_clusterers,
    register_clusterer,
)
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster.spectral import SpectralClustering

__all__ = [
    "BaseClusterer",
    "KMeans",
    "SpectralClustering",
    "create_clusterer",
    "get_clusterer_class",
    "list_clusterers",
    "register_clusterer",
]

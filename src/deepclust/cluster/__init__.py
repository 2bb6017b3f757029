"""Clustering algorithms behind one scikit-learn-style surface and a registry by name.

>>> from deepclust.cluster import create_clusterer
>>> labels = create_clusterer("kmeans", n_clusters=5, random_state=0).fit_predict(X)  # doctest: +SKIP

Registered: ``kmeans``, ``spectral``, ``gmm``, ``agglomerative`` (they take
``n_clusters``, an integer or ``"auto"``) and ``dbscan``, ``optics``, ``hdbscan``
(they find their own number of clusters and label noise ``-1``), and ``c2m`` (a learned
metric finds the clustering and its number of clusters).
"""

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import (
    create_clusterer,
    get_clusterer_class,
    list_clusterers,
    register_clusterer,
    takes_n_clusters,
)
from deepclust.cluster.agglomerative import Agglomerative
from deepclust.cluster.density import DBSCAN, HDBSCAN, OPTICS
from deepclust.cluster.k_estimation import K_METHODS, KEstimate, eigengap, estimate_n_clusters
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster.learned import C2MClusterer
from deepclust.cluster.mixture import GaussianMixture
from deepclust.cluster.neighbors import affinity_matrix, knn_graph
from deepclust.cluster.spectral import SpectralClustering, knn_affinity, spectral_embedding, top_eigenvectors

__all__ = [
    "Agglomerative",
    "BaseClusterer",
    "C2MClusterer",
    "DBSCAN",
    "GaussianMixture",
    "HDBSCAN",
    "KEstimate",
    "KMeans",
    "K_METHODS",
    "OPTICS",
    "SpectralClustering",
    "affinity_matrix",
    "create_clusterer",
    "eigengap",
    "estimate_n_clusters",
    "get_clusterer_class",
    "knn_affinity",
    "knn_graph",
    "list_clusterers",
    "register_clusterer",
    "spectral_embedding",
    "takes_n_clusters",
    "top_eigenvectors",
]

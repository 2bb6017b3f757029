"""Clustering algorithms behind one scikit-learn-style surface and a registry by name.

>>> from deepclust.cluster import create_clusterer
>>> labels = create_clusterer("kmeans", n_clusters=5, random_state=0).fit_predict(X)  # doctest: +SKIP

Registered: ``kmeans``, ``spectral``, ``gmm``, ``agglomerative`` (they take
``n_clusters``, an integer or ``"auto"``) and ``dbscan``, ``optics``, ``hdbscan``
(they find their own number of clusters and label noise ``-1``), and ``c2m`` (a learned
metric finds the clustering and its number of clusters).
"""

from deepclust.lazy import lazy_names

# The names load their modules on first use (PEP 562): a Dask worker that assigns blocks of a
# store (cluster.at_scale) imports this package without torch or scikit-learn.
_WHERE = {
    "BaseClusterer": "_base",
    "create_clusterer": "_registry", "get_clusterer_class": "_registry", "list_clusterers": "_registry",
    "register_clusterer": "_registry", "takes_n_clusters": "_registry",
    "Agglomerative": "agglomerative", "DBSCAN": "density", "HDBSCAN": "density", "OPTICS": "density",
    "K_METHODS": "k_estimation", "estimate_n_clusters": "k_estimation",
    "KEstimate": "k_curve", "eigengap": "k_curve",
    "KMeans": "kmeans", "C2MClusterer": "learned", "GaussianMixture": "mixture",
    "affinity_matrix": "neighbors", "knn_graph": "neighbors",
    "SpectralClustering": "spectral", "knn_affinity": "spectral", "spectral_embedding": "spectral",
    "top_eigenvectors": "spectral",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())

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

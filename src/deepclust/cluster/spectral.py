"""Spectral clustering on a k-nearest-neighbour graph (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import SpectralClustering as _SkSpectral

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.cluster.kmeans import _as_seed


@register_clusterer("spectral")
class SpectralClustering(BaseClusterer):
    """Spectral clustering (von Luxburg, 2007) of a symmetric k-NN affinity graph.

    The setting of the core paper's code: scikit-learn's ``SpectralClustering`` with
    ``affinity="nearest_neighbors"`` and k-means on the spectral embedding. It builds
    an n x n problem, fine for thousands of images.

    Parameters
    ----------
    n_clusters : int, default 8
    n_neighbors : int, default 10
        Neighbours per point in the affinity graph.
    n_init : int, default 10
        k-means restarts on the spectral embedding.
    random_state : int, numpy Generator or None

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
    """

    def __init__(self, n_clusters=8, n_neighbors=10, n_init=10, random_state=None):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X, y=None):
        X = self._validate_data(X)
        sc = _SkSpectral(
            n_clusters=int(self.n_clusters),
            affinity="nearest_neighbors",
            n_neighbors=min(int(self.n_neighbors), X.shape[0] - 1),
            assign_labels="kmeans",
            n_init=self.n_init,
            random_state=_as_seed(self.random_state),
        ).fit(X)
        self.labels_ = sc.labels_.astype(np.int64)
        self.n_clusters_ = int(len(np.unique(self.labels_)))
        return self

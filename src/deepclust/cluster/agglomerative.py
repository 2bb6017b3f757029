"""Agglomerative (hierarchical) clustering on a k-NN connectivity graph, so that it scales."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.cluster.neighbors import knn_graph
from deepclust.validation import check_choice, check_int

LINKAGES = ("ward", "average", "complete", "single")


@register_clusterer("agglomerative")
class Agglomerative(BaseClusterer):
    """Bottom-up merging of clusters (Ward, 1963), restricted to k-nearest-neighbour pairs.

    Wraps :class:`sklearn.cluster.AgglomerativeClustering`. Without a connectivity graph
    it needs the ``n x n`` distances; with one, only pairs of neighbours can merge, which
    keeps time and memory near-linear and favours clusters that follow the data's shape.

    Parameters
    ----------
    n_clusters : int or "auto", default 8
        ``"auto"``: the best silhouette over 2..50.
    linkage : {"ward", "average", "complete", "single"}, default "ward"
    n_neighbors : int or None, default 10
        Neighbours per point of the connectivity graph; None uses no graph (n x n).
    random_state : int, numpy Generator or None
        Seeds the approximate neighbour search on large data (the merging is deterministic).
    memory : joblib.Memory, str or None, default None
        Where scikit-learn caches the merge tree: with one, refitting the same data at
        another ``n_clusters`` cuts the cached tree instead of building it again (as
        :func:`deepclust.selection.sweep` does).

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
    """

    def __init__(self, n_clusters=8, linkage="ward", n_neighbors=10, random_state=None, memory=None):
        self.n_clusters = n_clusters
        self.memory = memory
        self.linkage = linkage
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    def check_params(self):
        check_choice("linkage", self.linkage, LINKAGES)
        check_int("n_neighbors", self.n_neighbors, 1, optional=True)

    def fit(self, X, y=None):
        from sklearn.cluster import AgglomerativeClustering

        X = self._validate_data(X)
        k = self._resolve_n_clusters(X)
        n = X.shape[0]
        if n == 1:
            self.labels_ = np.zeros(1, dtype=np.int64)
            self.n_clusters_ = 1
            return self
        connectivity = None
        if self.n_neighbors is not None:
            indices, _ = knn_graph(X, min(self.n_neighbors, n - 1), random_state=self.random_state)
            rows = np.repeat(np.arange(n), indices.shape[1])
            A = sp.csr_matrix((np.ones(rows.size), (rows, indices.ravel())), shape=(n, n))
            connectivity = A + A.T
        with warnings.catch_warnings():
            # a graph of several components is completed by scikit-learn, as we want
            warnings.filterwarnings("ignore", message=".*connected components.*")
            model = AgglomerativeClustering(n_clusters=k, linkage=self.linkage, connectivity=connectivity,
                                            memory=self.memory, compute_full_tree=self.memory is not None).fit(X)
        self.labels_ = model.labels_.astype(np.int64)
        self.n_clusters_ = int(len(np.unique(self.labels_)))
        return self

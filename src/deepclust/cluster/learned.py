"""Clustering by a learned metric: C2M (Critic2Metric) finds the clustering, and its number
of clusters, that a metric trained on labelled datasets scores highest.

>>> C2MClusterer(metric="runs/c2m/metric.pt").fit_predict(X)   # doctest: +SKIP

The metric is trained once (``deepclust train --method c2m`` or
:meth:`deepclust.methods.C2M.fit` then ``save``) and reused on any new data.
"""

from __future__ import annotations

import os

import numpy as np

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.errors import DeepclustError


def load_metric(metric, random_state=None):
    """A fitted :class:`deepclust.methods.C2M`, given as one or as the path of a saved one."""
    from deepclust.cluster.c2m import C2M  # deferred: the learned metric needs torch

    if isinstance(metric, C2M):
        metric._fitted()
        return metric.seed_search(random_state) if random_state is not None else metric
    if metric is None:
        raise DeepclustError("c2m needs a learned metric: pass metric=PATH (--param metric=PATH), a file "
                         "written by `deepclust train --method c2m` or C2M.save")
    return C2M.load(os.fspath(metric), random_state=random_state)


@register_clusterer("c2m")
class C2MClusterer(BaseClusterer):
    """Cluster with a learned C2M metric: the Cross-Entropy Method (and, if the metric was
    trained so, k-means / Ward / single linkage for every k) proposes clusterings and the
    metric keeps the one it scores highest. It finds its own number of clusters, at most
    the metric's ``max_clusters``.

    Parameters
    ----------
    metric : str, path or C2M
        The learned metric (``metric.pt`` of ``deepclust train --method c2m``).
    random_state : int or None
        Seeds the search.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
        The estimated number of clusters.
    score_ : float
        The metric's score of the clustering found.
    """

    def __init__(self, metric=None, random_state=None):
        self.metric = metric
        self.random_state = random_state

    def check_params(self):
        if self.metric is None:
            load_metric(None)
        if isinstance(self.metric, (str, os.PathLike)) and not os.path.isfile(self.metric):
            raise DeepclustError(f"no C2M metric at '{os.fspath(self.metric)}'; train one with "
                                 "`deepclust train --method c2m` and pass its metric.pt")

    def fit(self, X, y=None):
        X = self._validate_data(X)
        model = load_metric(self.metric, self.random_state)
        if X.shape[0] < 3:  # too few points to weigh clusterings: one cluster
            self.labels_, self.n_clusters_ = np.zeros(X.shape[0], dtype=np.int64), 1
            self.score_ = float("nan")
            return self
        self.labels_ = np.asarray(model.fit_predict(X), dtype=np.int64)
        self.n_clusters_ = int(model.n_clusters_)
        self.score_ = float(model.search_curve_[-1])  # the best score the search saw: that of labels_
        return self

"""Clustering scores against true classes, and statistics over repeated runs.

* ``CA``: cluster accuracy as in Bjerge et al. (2025), eq. 4 (after Fahad et al., 2014):
  each cluster counts the images of its majority class (cluster purity).
* ``ACC``: accuracy under the best one-to-one matching of clusters to classes (Hungarian
  method); clusters left without a class count as wrong, so it also works when the
  number of clusters differs from the number of classes.
* ``NMI``, ``AMI``, ``ARI``: scikit-learn's implementations.

Labels may be integers or strings; every function takes ``y_true`` and ``y_pred`` as
arrays of shape ``(n_samples,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm

from deepclust.errors import DeepclustError


def contingency(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of images per (cluster, class).

    Returns
    -------
    table : ndarray of shape (n_clusters, n_classes)
        ``table[i, j]`` images of cluster ``clusters[i]`` with class ``classes[j]``.
    clusters : ndarray of shape (n_clusters,)
    classes : ndarray of shape (n_classes,)
    """
    y_true, y_pred = _check_labels(y_true, y_pred)
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table, clusters, classes


def cluster_accuracy(y_true, y_pred) -> float:
    """CA (eq. 4 of the core paper): sum over clusters of the majority-class count, over n."""
    table, _, _ = contingency(y_true, y_pred)
    return float(table.max(axis=1).sum() / table.sum())


def hungarian_match(y_true, y_pred) -> dict:
    """The one-to-one map from cluster to class that maximises the matched images.

    Returns
    -------
    dict
        ``{cluster: class}`` for every matched cluster; with more clusters than classes
        some clusters are left out, with fewer some classes are.
    """
    table, clusters, classes = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols)}


def matched_accuracy(y_true, y_pred) -> float:
    """ACC: the fraction of images whose cluster is matched (Hungarian) to their class."""
    table, _, _ = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def normalized_mutual_info(y_true, y_pred) -> float:
    return float(skm.normalized_mutual_info_score(*_check_labels(y_true, y_pred)))


def adjusted_mutual_info(y_true, y_pred) -> float:
    return float(skm.adjusted_mutual_info_score(*_check_labels(y_true, y_pred)))


def adjusted_rand(y_true, y_pred) -> float:
    return float(skm.adjusted_rand_score(*_check_labels(y_true, y_pred)))


#: Metric name -> function(y_true, y_pred) -> float, in the order of the papers' tables.
METRICS: dict[str, Callable] = {
    "CA": cluster_accuracy,
    "ACC": matched_accuracy,
    "NMI": normalized_mutual_info,
    "AMI": adjusted_mutual_info,
    "ARI": adjusted_rand,
}


def get_metric(name: str) -> Callable:
    """A metric function by name (``CA``, ``ACC``, ``NMI``, ``AMI``, ``ARI``)."""
    try:
        return METRICS[name.upper()]
    except KeyError:
        raise DeepclustError(f"unknown metric '{name}'; choose one of: {', '.join(METRICS)}") from None


def score_clustering(y_true, y_pred, metrics: Sequence[str] = tuple(METRICS)) -> dict[str, float]:
    """Every metric of ``metrics`` for one clustering, as ``{name: value}``."""
    return {name: get_metric(name)(y_true, y_pred) for name in metrics}


@dataclass
class RepeatedScores:
    """Scores of one clustering algorithm repeated over seeds.

    Attributes
    ----------
    seeds : list of int
    runs : list of dict
        One ``{metric: value}`` per seed.
    """

    seeds: list[int]
    runs: list[dict[str, float]]

    @property
    def metrics(self) -> list[str]:
        return list(self.runs[0]) if self.runs else []

    def mean(self) -> dict[str, float]:
        return {m: float(np.mean([r[m] for r in self.runs])) for m in self.metrics}

    def std(self) -> dict[str, float]:
        """Sample standard deviation (ddof=1); 0 for a single run."""
        return {
            m: float(np.std([r[m] for r in self.runs], ddof=1)) if len(self.runs) > 1 else 0.0
            for m in self.metrics
        }

    def formatted(self, digits: int = 3) -> dict[str, str]:
        """``{metric: "AVG (SD)"}`` as in the papers' tables, e.g. ``"0.837 (0.029)"``."""
        mean, std = self.mean(), self.std()
        return {m: f"{mean[m]:.{digits}f} ({std[m]:.{digits}f})" for m in self.metrics}


def repeat_clustering(
    X: np.ndarray,
    y_true,
    make_clusterer: Callable[[int], object],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    metrics: Sequence[str] = tuple(METRICS),
) -> RepeatedScores:
    """Cluster ``X`` once per seed and score each run against ``y_true``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y_true : array of shape (n_samples,)
    make_clusterer : callable
        ``make_clusterer(seed)`` returns an estimator with ``fit_predict``.
    seeds : sequence of int
    metrics : sequence of str

    Returns
    -------
    RepeatedScores
    """
    runs = []
    for seed in seeds:
        labels = make_clusterer(int(seed)).fit_predict(X)
        runs.append(score_clustering(y_true, labels, metrics))
    return RepeatedScores(seeds=[int(s) for s in seeds], runs=runs)


def _check_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise DeepclustError(
            f"labels must be 1-d arrays; got y_true of shape {y_true.shape} and y_pred of shape {y_pred.shape}"
        )
    if len(y_true) != len(y_pred):
        raise DeepclustError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}; they must match")
    if len(y_true) == 0:
        raise DeepclustError("cannot score an empty clustering; pass at least one label")
    return y_true, y_pred

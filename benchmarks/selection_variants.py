"""Other forms of the label-free k criterion, tried on the collections of
benchmarks/select_collections.py before settling deepclust.selection's generalization score:
each picks the highest-scoring of the same candidates (k-means, spectral, agglomerative at
about 15 ks), and the table counts where its k is within 25% of the truth and its ACC within
0.03 of the oracle's.

* ``loo-PCS-aALPHA``: the probe as a ridge classifier on PCS principal components with
  penalty ALPHA, its held-out error by the exact leave-one-out formula of ridge regression
  (more training images per cluster than 5 folds give), against the same Gaussian null;
  ``-balanced``: the mean of the per-cluster error rates.
* ``knn10``: a 10-nearest-neighbour vote as the probe, against the null's.
* ``gap``: the gap statistic (Tibshirani et al., 2001): the null's log within-cluster sum of
  squares minus the clustering's.
* ``floor-F``: the generalization score with a floor of F on the error rates instead of one
  image (a clustering with a few mistakes no longer loses to a perfectly predicted merge).

    python benchmarks/selection_variants.py [COLLECTION ...]      # ~10 min idle on 2 cores
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.neighbors import NearestNeighbors

from collections_k import COLLECTIONS, load_collection
from select_collections import ALGORITHMS, k_grid
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster.space import prepare_features
from deepclust.metrics import matched_accuracy
from deepclust.selection import GeneralizationScore, select


class LeaveOneOut:
    """Ridge classification of one-hot labels, each image predicted without itself."""

    def __init__(self, Z, alpha):
        self.Zb = np.hstack([Z, np.ones((len(Z), 1))])
        self.P = self.Zb @ np.linalg.inv(self.Zb.T @ self.Zb + alpha * np.eye(self.Zb.shape[1]))
        self.h = (self.P * self.Zb).sum(1)  # the hat matrix's diagonal

    def error(self, labels, balanced=False):
        _, index = np.unique(labels, return_inverse=True)
        Y = np.eye(index.max() + 1)[index]
        fitted = self.P @ (self.Zb.T @ Y)
        wrong = ((fitted - self.h[:, None] * Y) / (1 - self.h[:, None])).argmax(1) != index
        return float((np.bincount(index, wrong) / np.bincount(index)).mean() if balanced else wrong.mean())


def knn_error(neighbours, labels):
    _, index = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(index), index.max() + 1))
    np.add.at(votes, (np.repeat(np.arange(len(index)), neighbours.shape[1]), index[neighbours].ravel()), 1)
    return float((votes.argmax(1) != index).mean())


def within_ss(Z, labels):
    _, index = np.unique(labels, return_inverse=True)
    return sum(((Z[index == j] - Z[index == j].mean(0)) ** 2).sum() for j in range(index.max() + 1))


def variants(X, seed=0):
    """name -> score(k, labels), each against a Gaussian null with the data's principal variances."""
    rng = np.random.default_rng(seed)
    general = GeneralizationScore(X, random_state=seed)
    Z128 = general.probe.components  # the top 128 principal components, as the criterion's probe sees them
    null128 = rng.standard_normal(Z128.shape) * Z128.std(0)
    null_labels = {}

    def null_cut(k):
        if k not in null_labels:
            null_labels[k] = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(null128)
        return null_labels[k]

    def ratio(null_error, error, floor):
        return float(np.log((null_error + floor) / (error + floor)))

    scores = {}
    for m, alpha, balanced in ((128, 1.0, False), (64, 1.0, False), (32, 1.0, False), (128, 0.1, False),
                               (128, 10.0, False), (128, 1.0, True)):
        real, null = LeaveOneOut(Z128[:, :m], alpha), LeaveOneOut(null128[:, :m], alpha)
        name = f"loo-{m}-a{alpha:g}" + ("-balanced" if balanced else "")
        scores[name] = (lambda real, null, balanced: lambda k, labels: ratio(
            null.error(null_cut(k), balanced), real.error(labels, balanced), 1 / len(labels)))(real, null, balanced)
    near = NearestNeighbors(n_neighbors=11).fit(Z128).kneighbors(Z128)[1][:, 1:]
    near_null = NearestNeighbors(n_neighbors=11).fit(null128).kneighbors(null128)[1][:, 1:]
    scores["knn10"] = lambda k, labels: ratio(knn_error(near_null, null_cut(k)), knn_error(near, labels), 1 / len(labels))
    scores["gap"] = lambda k, labels: float(np.log(within_ss(null128, null_cut(k))) - np.log(within_ss(Z128, labels)))
    for floor in (0.01, 0.02, 0.05):
        scores[f"floor-{floor:g}"] = (lambda floor: lambda k, labels: ratio(
            general.null_error(k), 1 - general.probe.accuracy(labels), floor))(floor)
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collections", nargs="*", default=list(COLLECTIONS))
    args = parser.parse_args(argv)
    tally: dict[str, list[int]] = {}
    for name in args.collections:
        vectors, y = load_collection(name)
        X = prepare_features(vectors, True)
        y = y.astype(str)
        truth = len(set(y.tolist()))
        sel = select(X, k_grid(truth), ALGORITHMS, criteria=["generalization"], seed=0)
        acc = [matched_accuracy(y, c.labels) for c in sel.candidates]
        oracle = max(acc)
        cells = []
        for variant, score in {"generalization": lambda k, labels: None, **variants(X)}.items():
            values = [c.scores["generalization"] if variant == "generalization" else score(c.k, c.labels)
                      for c in sel.candidates]
            i = int(np.nanargmax(values))
            best = sel.candidates[i]
            hits = tally.setdefault(variant, [0, 0])
            hits[0] += abs(best.k - truth) <= 0.25 * truth
            hits[1] += oracle - acc[i] <= 0.03
            cells.append(f"{variant} k={best.k} {best.algorithm[:4]} {acc[i]:.3f}")
        print(f"{name} (true k {truth}, oracle ACC {oracle:.3f}): " + "; ".join(cells), flush=True)
    n = len(args.collections)
    print("\n| variant | k within 25% | ACC within 0.03 |\n|---|---|---|")
    for variant, (close_k, close_acc) in tally.items():
        print(f"| {variant} | {close_k}/{n} | {close_acc}/{n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

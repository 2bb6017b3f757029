"""Critic2Metric (C2M): a clustering-quality metric learned from labelled datasets.

Alami, Kaddah and Read, "Transferable Deep Metric Learning for Clustering" (IDA 2023).
A clustering ``y`` of a dataset ``X`` becomes a graph whose cliques are the clusters; a
graph autoencoder embeds its nodes, and the upper triangle of ``z^T z`` (scaled by the
number of points) is a fixed-size vector whatever the dataset's size. A Wasserstein
critic on that vector is the metric ``r(X, y)``; a new dataset is clustered by the
Cross-Entropy Method, searching the weights of a small network whose argmax over
``max_clusters`` outputs is the clustering that maximises ``r``.

The pieces are plain functions and small modules, one file each:

- ``graph``: :func:`standardize` puts any (n, d) array into the metric's input space (centred, unit
  total variance, PCA or zero-padding to ``input_dim``), so datasets of any dimension share
  one metric;
  :func:`propagate` is one graph-convolution step on the clique graph: with self-loops and
  symmetric normalisation, ``D^-1/2 (A + I) D^-1/2`` averages each point's cluster, so it
  is computed from cluster means without an n x n matrix;
  :class:`GraphAutoencoder` (two graph-convolution layers, inner-product decoder, Kipf and
  Welling 2016) and :func:`clustering_embedding` (the size-independent vector);
- ``critic``: :class:`Critic` (MLP 256-256-512-512-1, LeakyReLU 0.2);
- ``features``: the structure features of a clustering on the neighbour graph;
- ``search``: :func:`cem_search` (Algorithm 1) over a population of clustering networks at once;
- ``metric``: :class:`C2M` and its ``PRESETS``; ``checks``: the paper's critic checks.
"""

from deepclust.cluster.c2m.checks import mislabel, mislabel_scores, truth_rank
from deepclust.cluster.c2m.critic import Critic, clip_weights
from deepclust.cluster.c2m.features import (mutual_neighbours, neighbour_components, neighbour_reach, size_features,
                                            structure_features)
from deepclust.cluster.c2m.graph import (GRAPHS, GraphAutoencoder, clustering_embedding, nearest_neighbours,
                                         neighbour_mean, propagate, standardize)
from deepclust.cluster.c2m.metric import C2M, PRESETS
from deepclust.cluster.c2m.search import (SEARCH_SETTINGS, cem_search, classic_candidates, near_misses, pooled_whitening,
                                          relabel, rotate_points)

__all__ = ["C2M", "Critic", "GRAPHS", "GraphAutoencoder", "PRESETS", "SEARCH_SETTINGS", "cem_search", "classic_candidates",
           "clip_weights", "clustering_embedding", "mislabel", "mislabel_scores", "mutual_neighbours", "near_misses",
           "nearest_neighbours", "neighbour_components", "neighbour_mean", "neighbour_reach", "pooled_whitening",
           "propagate", "relabel", "rotate_points", "size_features", "standardize", "structure_features", "truth_rank"]

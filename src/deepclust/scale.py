"""Kept for the names the README showed before the house was rebuilt: the embedding store,
``deepclust embed`` and clustering at scale now live in :mod:`deepclust.features.store`,
:mod:`deepclust.jobs.embed` and :mod:`deepclust.cluster.at_scale`."""

from deepclust.cluster.at_scale import (ScaleKMeans, ScaleSpectral, cluster_distances, kmeans_at_scale, sample_rows,
                                        spectral_at_scale)
from deepclust.cluster.space import cluster_sums
from deepclust.features.store import EmbeddingTable, embed_partition, open_store, write_store
from deepclust.jobs.cluster import cluster_store
from deepclust.jobs.embed import embed_images

__all__ = ["EmbeddingTable", "ScaleKMeans", "ScaleSpectral", "cluster_distances", "cluster_store", "cluster_sums",
           "embed_images", "embed_partition", "kmeans_at_scale", "open_store", "sample_rows", "spectral_at_scale",
           "write_store"]

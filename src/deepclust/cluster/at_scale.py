"""Clustering an embedding store too large for one process: tasks over its blocks.

The store is read block by block in tasks (a block is a partition), so no process holds
more than the sample, the centres and one block:

* k-means: :class:`~deepclust.cluster.KMeans` (faiss backend) trained on a random sample
  that fits in memory, every point assigned to its nearest centre in parallel, and
  optional full-data Lloyd passes whose per-block sums are combined on the client;
* spectral: the same k-means over-clusters into many small groups; the weighted spectral
  clustering of :class:`~deepclust.cluster.SpectralClustering` clusters the group centres
  (each weighted by its size), and every point takes its group's cluster.

The tasks run on an executor of :mod:`deepclust.parallel.executors`: a Dask cluster, or
this process when no scheduler is given, through the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from deepclust.cluster.space import cluster_sums
from deepclust.errors import DeepclustError
from deepclust.features.store import EmbeddingTable, open_vectors
from deepclust.parallel.executors import LocalExecutor

log = logging.getLogger("deepclust")




def _read_block(block: dict, normalize: bool) -> np.ndarray:
    """The valid rows of one block (optionally L2-normalised), float32."""
    z = open_vectors(block["path"])
    X = np.asarray(z[block["start"]:block["stop"]], dtype=np.float32)[block["valid"]]
    if not np.isfinite(X).all():
        raise DeepclustError(f"the embeddings of rows {block['start']}-{block['stop']} hold NaN or infinite values "
                             "(a backbone that overflowed?); embed again with another backbone or in float32")
    if normalize:
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def _sample_block(block: dict, normalize: bool) -> np.ndarray:
    """Rows ``block["take"]`` (positions among the block's valid rows)."""
    return _read_block(block, normalize)[block["take"]]


def _nearest(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and squared distance to it of every row (exact, faiss flat index)."""
    import faiss

    index = faiss.IndexFlatL2(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    distances, nearest = index.search(np.ascontiguousarray(X), 1)
    return nearest[:, 0].astype(np.int32), np.maximum(distances[:, 0], 0.0)


def _assign_block(block: dict, centres: np.ndarray, normalize: bool) -> dict:
    """Nearest centres of a block's rows, and the per-centre sums a Lloyd step needs."""
    X = _read_block(block, normalize)
    labels, sq = _nearest(X, centres)
    sums, counts = cluster_sums(X, labels, len(centres))
    return {"labels": labels, "counts": counts, "sums": sums, "inertia": float(sq.sum())}


def _distance_block(block: dict, means: np.ndarray, normalize: bool) -> np.ndarray:
    """Distance of every row of a block to the mean of its cluster (``block["labels"]``)."""
    X = _read_block(block, normalize)
    return np.linalg.norm(X - means[block["labels"]], axis=1).astype(np.float64)


def _run_blocks(executor, fn, blocks: list[dict], *args, desc: str = "", progress: bool = False) -> list:
    """``fn(block, *args)`` over every block; results in block order. A failed block is fatal
    (clustering is minutes of work, not hours: rerun it)."""
    out: list = [None] * len(blocks)
    bar = tqdm(total=len(blocks), unit="block", desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for i, result, error in executor.run(fn, blocks, *args):
            if error is not None:
                raise DeepclustError(f"{desc or 'a task'} failed on rows {blocks[i]['start']}-{blocks[i]['stop']}: {error}")
            out[i] = result
            bar.update(1)
    finally:
        bar.close()
    return out


@dataclass
class ScaleKMeans:
    """Result of :func:`kmeans_at_scale`: ``labels`` per valid row, in store order;
    ``sums`` (k, d) and ``counts`` (k,) of the rows in each cluster of the last pass."""

    labels: np.ndarray
    centres: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    inertia_history: list[float]
    sample_size: int


@dataclass
class ScaleSpectral:
    """Result of :func:`spectral_at_scale`: ``labels`` per valid row, ``sums`` and
    ``counts`` of the rows in each cluster, and ``facts`` for the run's summary."""

    labels: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    facts: dict


def store_blocks(table: EmbeddingTable) -> list[dict]:
    """Every block of the store: its rows, which of them hold a vector, and where its
    vectors start among all valid rows (``first``; ``count`` of them)."""
    blocks, first = [], 0
    for a, b in table.blocks():
        valid = table.valid[a:b]
        blocks.append({"path": table.vectors_path, "start": a, "stop": b, "valid": valid, "first": first,
                       "count": int(valid.sum())})
        first += blocks[-1]["count"]
    return blocks


def sample_rows(blocks: list[dict], size: int, executor, normalize: bool, rng: np.random.Generator,
                progress: bool = False) -> np.ndarray:
    """A uniform random sample of ``size`` of the valid rows of ``blocks`` (:func:`store_blocks`),
    read block by block on the executor, in store order."""
    n = sum(b["count"] for b in blocks)
    chosen = np.sort(rng.choice(n, size=min(size, n), replace=False))
    tasks = []
    for block in blocks:
        lo = block["first"]
        take = chosen[(chosen >= lo) & (chosen < lo + block["count"])] - lo
        if len(take):
            tasks.append({**block, "take": take})
    return np.concatenate(_run_blocks(executor, _sample_block, tasks, normalize, desc="sampling", progress=progress))


def kmeans_at_scale(table: EmbeddingTable, n_clusters: int, executor=None, sample_size: int | None = None,
                    lloyd_passes: int = 0, n_init: int = 1, max_iter: int = 100, normalize: bool = True,
                    random_state=0, progress: bool = False) -> ScaleKMeans:
    """K-means of every valid row of a store without holding it in one process.

    1. :class:`~deepclust.cluster.KMeans` (faiss backend, k-means++ seeds, at most
       ``max_iter`` iterations) on a uniform random sample of ``sample_size`` rows
       (default ``max(256 k, 50,000)``, faiss's own 256 points per centre with a floor),
       read block by block;
    2. ``lloyd_passes`` full-data Lloyd steps: each block assigns its rows and returns
       per-centre sums and counts; the client divides them for the new centres;
    3. a last pass assigns every row to its nearest centre.
    """
    from deepclust.cluster.kmeans import KMeans  # deferred: a worker that only assigns blocks needs no scikit-learn

    executor = executor or LocalExecutor()
    blocks = store_blocks(table)
    n = sum(b["count"] for b in blocks)
    if not 1 <= n_clusters <= n:
        raise DeepclustError(f"n_clusters={n_clusters} must be between 1 and the number of vectors ({n})")
    rng = np.random.default_rng(random_state)
    size = min(n, int(sample_size) if sample_size else max(256 * n_clusters, 50_000))
    sample = sample_rows(blocks, size, executor, normalize, rng, progress)
    log.info("k-means: %d clusters trained on a sample of %d of %d vectors", n_clusters, size, n)
    model = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, backend="faiss",
                   random_state=rng).fit(sample)
    centres = model.cluster_centers_.astype(np.float32)
    history = []
    for step in range(int(lloyd_passes) + 1):
        shared = executor.share(centres)
        parts = _run_blocks(executor, _assign_block, blocks, shared, normalize,
                            desc=f"assigning (pass {step + 1})", progress=progress)
        counts = np.sum([p["counts"] for p in parts], axis=0)
        sums = np.sum([p["sums"] for p in parts], axis=0)
        inertia = float(sum(p["inertia"] for p in parts))
        history.append(inertia)
        if step == lloyd_passes:
            break
        moved = counts > 0  # an emptied centre stays where it was
        centres = centres.copy()
        centres[moved] = (sums[moved] / counts[moved, None]).astype(np.float32)
        log.info("k-means: Lloyd pass %d of %d, inertia %.6g", step + 1, lloyd_passes, inertia)
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
    return ScaleKMeans(labels, centres, sums, counts, inertia, history, size)


def cluster_distances(executor, table: EmbeddingTable, labels: np.ndarray, means: np.ndarray, normalize: bool,
                      progress: bool = False) -> np.ndarray:
    """Each valid row's distance to the mean of its cluster (``means``, from the sums the
    clustering's last pass returned), in one pass over the blocks."""
    labelled = [{**b, "labels": labels[b["first"]:b["first"] + b["count"]]} for b in store_blocks(table)]
    return np.concatenate(_run_blocks(executor, _distance_block, labelled, executor.share(means.astype(np.float32)),
                                      normalize, desc="distances", progress=progress))


def spectral_at_scale(table: EmbeddingTable, n_clusters: int, executor=None, n_groups: int | None = None,
                      n_neighbors: int = 10, sample_size: int | None = None, lloyd_passes: int = 1,
                      normalize: bool = True, random_state=0, progress: bool = False) -> ScaleSpectral:
    """Spectral clustering of every valid row through an over-clustering.

    K-means at scale cuts the data into ``n_groups`` small groups (default
    ``min(max(20 k, 1000), n / 20)``; trained on ``sample_size`` rows, default
    ``max(40 n_groups, 50,000)``, 20 iterations, then ``lloyd_passes`` over all rows: the
    groups only need to be small and compact, not optimal);
    :class:`~deepclust.cluster.SpectralClustering` clusters the group centres, each
    weighted by its size; each row takes its group's cluster.
    """
    from deepclust.cluster.spectral import SpectralClustering  # deferred, as KMeans above

    n = int(table.valid.sum())
    groups = int(n_groups) if n_groups else min(max(20 * n_clusters, 1000), max(n // 20, n_clusters))
    if not n_clusters <= groups <= n:
        raise DeepclustError(f"n_groups={groups} must be between n_clusters={n_clusters} and the number of vectors ({n})")
    sample_size = min(n, int(sample_size) if sample_size else max(40 * groups, 50_000))
    km = kmeans_at_scale(table, groups, executor, sample_size, lloyd_passes, 1, 20, normalize, random_state, progress)
    used = km.counts > 0
    log.info("spectral: %d clusters of %d group centres (weighted by size)", n_clusters, int(used.sum()))
    sc = SpectralClustering(n_clusters=n_clusters, n_neighbors=min(n_neighbors, int(used.sum()) - 1),
                            random_state=random_state).fit(km.centres[used], sample_weight=km.counts[used])
    group_cluster = np.full(groups, -1, dtype=np.int64)
    group_cluster[used] = sc.labels_
    sums, _ = cluster_sums(km.sums[used], sc.labels_, n_clusters)  # a cluster's rows are its groups' rows
    counts = np.bincount(sc.labels_, weights=km.counts[used], minlength=n_clusters).astype(np.int64)
    return ScaleSpectral(group_cluster[km.labels], sums, counts,
                         {"n_groups": groups, "sample_size": km.sample_size, "group_inertia": km.inertia})

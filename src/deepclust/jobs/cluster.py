"""``deepclust cluster``: a folder of images (or an embedding store) in, a run folder out.

    images ─► find_images ─► create_backbone ─► embed_records ─► create_clusterer
           ─► assignments.csv, embeddings.npy, skipped.csv, summary.json, metrics.json

    --embeddings STORE ─► k-means or spectral at scale, block by block ─► the same run folder
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust import runs
from deepclust.cluster import (
    K_METHODS,
    C2MClusterer,
    estimate_n_clusters,
    get_clusterer_class,
    takes_n_clusters,
)
from deepclust.cluster.at_scale import (
    cluster_distances,
    kmeans_at_scale,
    sample_rows,
    spectral_at_scale,
    store_blocks,
)
from deepclust.cluster.space import (
    centre_margins,
    check_n_clusters,
    distances_to_centres,
    isolated_images,
    make_clusterer,
    prepare_features,
)
from deepclust.config import ClusterConfig
from deepclust.data import find_images, load_split, split_classes
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.feedback import load_feedback, resolve
from deepclust.features.backbones import create_backbone
from deepclust.features.cache import embedding_cache
from deepclust.features.extract import embed_records
from deepclust.features.runtime import check_precision, check_runtime
from deepclust.features.store import EmbeddingTable, open_store
from deepclust.io import check_writable, lock_folder, write_csv
from deepclust.naming import check_naming, name_clusters, templates_of
from deepclust.parallel.executors import open_executor
from deepclust.runs import cluster_summary, run_metrics, write_run_files
from deepclust.selection import progress_callback
from deepclust.validation import check_int

log = logging.getLogger("deepclust")

LABEL_SOURCES = ("folders",)


@dataclass
class ClusterResult:
    """What :func:`run_cluster` produced (also written to ``out``)."""

    paths: list[str]
    clusters: np.ndarray
    embeddings: np.ndarray
    labels: list[str] | None
    skipped: list[tuple[str, str]]
    metrics: dict[str, Any] | None
    summary: dict[str, Any]


def _labelled_source(source: str):
    """What ``--labelled`` names, read and checked before any embedding: ("feedback",
    Feedback), ("split", class names) or ("folder", absolute path)."""
    if source.endswith(".json") or os.path.isfile(source):
        return "feedback", load_feedback(source)
    if ":" in source and not os.path.isdir(source):
        split, subset = source.split(":", 1)
        return "split", set(load_split(split).classes(subset))
    if os.path.isdir(source):
        return "folder", os.path.abspath(source)  # as found, not resolved: class folders may be links
    raise DeepclustError(f"--labelled '{source}' is not a feedback.json, SPLIT:SUBSET (e.g. eu-moths:train) "
                         "or a folder of class sub-folders")


def labelled_images(config: ClusterConfig, records) -> np.ndarray:
    """``--labelled``: the known class of each of ``records`` (object array, None where not
    known), from a ``feedback.json``, ``SPLIT:SUBSET`` or a labelled folder inside the images."""
    source = config.labelled
    kind, what = _labelled_source(source)
    paths = [r.path for r in records]
    if kind == "feedback":
        found = resolve(what, paths)
        names = [name if name is not None else f"group {g}" for g, name in enumerate(found.names)]
        labels = np.array([names[g] if g >= 0 else None for g in found.group], dtype=object)
    elif kind == "split":
        labels = np.array([r.folder if r.folder in what else None for r in records], dtype=object)
    else:
        inside = [os.path.abspath(p).startswith(what + os.sep) for p in paths]
        if not any(inside):
            raise DeepclustError(f"--labelled '{source}' holds none of the images clustered; put the labelled "
                                 "class folders inside IMAGES_DIR, so that they are clustered with the rest")
        labels = np.array([os.path.basename(os.path.dirname(p)) if i else None for p, i in zip(paths, inside)],
                          dtype=object)
    known = labels[labels != None]  # noqa: E711 - elementwise
    if len(set(known.tolist())) < 2:
        raise DeepclustError(f"--labelled '{source}' labels {len(known)} of the images, in fewer than 2 classes; "
                             "choosing k from labels needs at least 2 known classes")
    log.info("%d of %d images labelled (%d classes) by %s", len(known), len(records), len(set(known.tolist())), source)
    return labels


def estimate_k(X: np.ndarray, config: ClusterConfig, noun: str = "images", labels=None):
    """``--n-clusters auto``: the :class:`~deepclust.cluster.KEstimate` of the prepared
    features ``X`` by ``config.k_method`` (else the algorithm's own) over ``k_min`` to
    ``k_max`` (at most one less than the rows). ``noun`` names the rows in messages;
    ``labels`` are the known classes of ``k_method="labels"`` (:func:`labelled_images`)."""
    method = config.k_method or ("labels" if labels is not None else get_clusterer_class(config.algorithm).k_method)
    k_max = min(config.k_max, len(X) - 1)
    if k_max < config.k_min:
        raise DeepclustError(f"--n-clusters auto needs more {noun} than k_min={config.k_min}; got {len(X)}")
    log.info("estimating the number of clusters (%s, k=%d..%d) from %d %s", method, config.k_min, k_max, len(X), noun)
    with progress_callback(config.progress and method in ("generalization", "stability"), "choosing k") as progress:
        estimate = estimate_n_clusters(X, method=method, k_min=config.k_min, k_max=k_max, random_state=config.seed,
                                       metric=config.k_metric, algorithm=config.algorithm, progress=progress,
                                       labels=labels)
    log.info("estimated %d clusters", estimate.n_clusters)
    if estimate.weak():
        log.warning("the choice of k = %d is weak: %s scores k = %s nearly as high (see %s)", estimate.n_clusters,
                    method, ", ".join(map(str, estimate.near_ties()[:5])), runs.K_ESTIMATION)
    return estimate


def record_k_estimate(out: str, estimate) -> None:
    """Write the estimate's curve to the run's ``k_estimation.csv``; without an estimate,
    remove a curve an earlier run left there (it would mislead)."""
    path = runs.run_path(out, runs.K_ESTIMATION)
    if estimate is not None:
        write_csv(path, ["k", "score"], [[p["k"], f"{p['score']:.6f}"] for p in estimate.curve()])
    elif os.path.exists(path):
        os.remove(path)


def run_cluster(config: ClusterConfig) -> ClusterResult:
    """Run the main job described by ``config``; write and return its results."""
    check_runtime(config.runtime)
    check_precision(config.precision)
    if config.embeddings:
        if config.images:
            raise DeepclustError("give IMAGES_DIR or --embeddings STORE, not both")
        if config.labelled:
            raise DeepclustError("--labelled reads image paths and folders, which a store does not keep in that form: "
                                 "drop --labelled, or cluster IMAGES_DIR")
        if config.unknown:
            raise DeepclustError("--unknown compares every image with every other, which a store is too large for: "
                                 "drop --unknown, or cluster IMAGES_DIR")
        if config.names:
            raise DeepclustError("--names matches images with the backbone's text tower, which a store does not keep: "
                                 "drop --names, or cluster IMAGES_DIR with a CLIP-family --backbone")
        if config.flip_average:
            raise DeepclustError("--flip-average changes how images are embedded, and a store holds its vectors "
                                 "already: drop --flip-average, or cluster IMAGES_DIR")
        return cluster_store(config)
    if config.scheduler:
        raise DeepclustError("--scheduler needs --embeddings STORE (make one with `deepclust embed IMAGES --out STORE "
                             "--scheduler ...`)")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if not config.images:
        raise DeepclustError("no image folder given; pass IMAGES_DIR (or --embeddings STORE)")
    if not config.out:
        raise DeepclustError("no run folder given; pass --out RUN_DIR")
    if config.labels is not None and config.labels not in LABEL_SOURCES:
        raise DeepclustError(f"labels='{config.labels}' is not known; use one of: {', '.join(LABEL_SOURCES)}")
    # fail before hours of embedding, not after
    if not isinstance(config.cluster_params, dict):
        raise DeepclustError(f"cluster_params={config.cluster_params!r} must be a mapping of parameter: value, e.g. {{eps: 0.3}}")
    make_clusterer(config.algorithm, "auto", config.seed, config.cluster_params).check_params()  # k is not known yet
    if config.k_method is not None and config.k_method not in K_METHODS:
        raise DeepclustError(f"k_method='{config.k_method}' is not known; use one of: {', '.join(K_METHODS)}")
    if config.k_method == "c2m":
        C2MClusterer(metric=config.k_metric).check_params()  # the metric file exists
    if config.labelled:
        if config.n_clusters != "auto":
            raise DeepclustError("--labelled chooses the number of clusters: add --n-clusters auto")
        _labelled_source(config.labelled)  # a bad source is refused before the embedding
    if config.k_method == "labels" and not config.labelled:
        raise DeepclustError("--k-method labels needs the images whose class you know: add --labelled SOURCE "
                             "(a feedback.json, SPLIT:SUBSET or a folder of class sub-folders)")
    density = not takes_n_clusters(config.algorithm)
    classes = split_classes(config.split, config.subset)
    requested_k = check_n_clusters(config.n_clusters)
    # (option, smallest value, None allowed): None workers means "choose by device"
    for name, minimum, optional in (("batch_size", 1, False), ("seed", 0, False), ("num_workers", 0, True),
                                    ("k_min", 1, False), ("k_max", 2, False)):
        check_int(name, getattr(config, name), minimum, optional=optional)
    if config.k_max < config.k_min:
        raise DeepclustError(f"k_max={config.k_max} must be >= k_min={config.k_min}")
    device = resolve_device(config.device)
    check_writable(config.out)  # a read-only or full --out is found now, not after the embedding
    with lock_folder(config.out):
        return _cluster_images(config, classes, requested_k, density, device, timings, t_start)


def _k_resolved(n_clusters: int, n_clusters_from: str, k_estimate) -> dict[str, Any]:
    """How many clusters the run made and where that number came from (summary.json's ``resolved``)."""
    return {"n_clusters": n_clusters, "n_clusters_from": n_clusters_from,
            "k_estimate": k_estimate.to_dict() if k_estimate is not None else None}


def _cluster_features(X: np.ndarray, config: ClusterConfig, n_clusters, n_clusters_from: str, known=None):
    """Cluster the prepared features ``X``: k estimated first when ``n_clusters`` is
    ``"auto"`` (its curve written; ``known`` classes for ``--labelled``), found by the
    algorithm when None. Returns (clusters, n_clusters, where it came from, the k estimate or None)."""
    k_estimate = estimate_k(X, config, "images", known) if n_clusters == "auto" else None
    record_k_estimate(config.out, k_estimate)
    if k_estimate is not None:
        n_clusters = k_estimate.n_clusters
        n_clusters_from = f"estimated ({k_estimate.method})"
    log.info("clustering %d images%s with %s", len(X),
             f" into {n_clusters} clusters" if n_clusters is not None else "", config.algorithm)
    clusterer = make_clusterer(config.algorithm, n_clusters, config.seed, config.cluster_params, device=config.device)
    clusters = np.asarray(clusterer.fit_predict(X), dtype=np.int64)
    if n_clusters is None:
        n_clusters = int(clusterer.n_clusters_)
    return clusters, n_clusters, n_clusters_from, k_estimate


def _find_records(config: ClusterConfig, classes, requested_k, density: bool, timings: dict) -> list:
    """The images to cluster, refused early when nothing says how many clusters to make."""
    t = time.perf_counter()
    records = find_images(config.images, classes=classes, exclude=[config.out])
    timings["discover"] = time.perf_counter() - t
    log.info("found %d images in '%s'", len(records), config.images)
    check_n_clusters(requested_k, len(records))
    if requested_k is None and config.labels is None and not density:
        raise DeepclustError(
            "the number of clusters is unknown; pass --n-clusters K, or --n-clusters auto to estimate it "
            "(or --labels folders to use the number of classes)"
        )
    if density and requested_k is not None:
        log.warning("%s finds its own number of clusters; --n-clusters %s is ignored", config.algorithm, requested_k)
    return records


def _write_outputs(config: ClusterConfig, paths, vectors, clusters, distances, y_true, metrics, cache: str,
                   timings: dict, confidence: np.ndarray | None = None, names: dict | None = None) -> None:
    """embeddings.npy and the run files; a failure keeps the cached embeddings and says so."""
    t = time.perf_counter()
    try:
        runs.write_embeddings(config.out, vectors)
        write_run_files(config, paths, clusters, distances, y_true, metrics, confidence, names)
    except OSError as exc:
        raise DeepclustError(
            f"cannot write the results to '{config.out}' ({exc.strerror or exc}); the embeddings cached in "
            f"'{cache}' are kept and reused when the same command runs again: free space, or pass "
            "another --out") from None
    timings["write"] = time.perf_counter() - t


def _cluster_images(config: ClusterConfig, classes, requested_k, density: bool, device, timings: dict,
                    t_start: float) -> ClusterResult:
    records = _find_records(config, classes, requested_k, density, timings)
    # backbone, embeddings
    t = time.perf_counter()
    backbone = create_backbone(config.backbone, weights=config.weights, image_size=config.image_size,
                               flip_average=config.flip_average, pooling=config.pooling)
    timings["load_backbone"] = time.perf_counter() - t
    candidates = check_naming(backbone, config.names) if config.names else None  # before hours of embedding
    runs.retire_outputs(config.out)
    cache = embedding_cache(config.cache)
    log.info("embedding with %s (%s, %d px)", backbone.name, backbone.weights, backbone.image_size)
    emb = embed_records(records, backbone, cache, batch_size=config.batch_size, device=device,
                        num_workers=config.num_workers, progress=config.progress, fast_decode=config.fast_decode,
                        runtime=config.runtime, also=[runs.run_path(config.out, runs.CACHE)],  # a run from before
                        precision=config.precision)
    timings["embed"] = emb.seconds
    kept = emb.kept(records)
    skipped = emb.skipped_paths(records)
    runs.write_skipped(config.out, skipped)
    if skipped:
        log.warning("skipped %d unreadable image(s); see %s", len(skipped), runs.run_path(config.out, runs.SKIPPED))
    if not kept:
        raise DeepclustError(f"none of the {len(records)} images could be read; see the reasons in {runs.SKIPPED}")
    y_true = [r.folder for r in kept] if config.labels == "folders" else None
    n_classes = len(set(y_true)) if y_true is not None else None
    n_clusters = None if density else (requested_k if requested_k is not None else n_classes)
    n_clusters_from = "the algorithm" if density else ("--n-clusters" if requested_k is not None else "number of classes")
    check_n_clusters(n_clusters, len(kept))

    # cluster
    t = time.perf_counter()
    X = prepare_features(emb.vectors, config.normalize)
    known = labelled_images(config, kept) if config.labelled and n_clusters == "auto" else None
    clusters, n_clusters, n_clusters_from, k_estimate = _cluster_features(X, config, n_clusters, n_clusters_from, known)
    n_unknown = None
    if config.unknown:
        far = isolated_images(X)
        clusters = np.where(far, -1, clusters)
        n_unknown = int(far.sum())
        log.info("%d image(s) far from every other put in cluster -1 (unknown)", n_unknown)
    distances = distances_to_centres(X, clusters)
    confidence = centre_margins(X, clusters)
    timings["cluster"] = time.perf_counter() - t
    named, naming = None, None
    if candidates is not None:
        t = time.perf_counter()
        templates = templates_of(backbone, config.backbone)
        named = name_clusters(backbone, emb.vectors, clusters, candidates, templates, config.progress)
        naming = {"file": os.path.abspath(config.names), "candidates": len(candidates), "templates": list(templates)}
        timings["names"] = time.perf_counter() - t

    metrics = run_metrics(y_true, clusters)

    paths = [r.path for r in kept]
    _write_outputs(config, paths, emb.vectors, clusters, distances, y_true, metrics, cache, timings, confidence, named)
    timings["total"] = time.perf_counter() - t_start
    resolved = {
        **_k_resolved(n_clusters, n_clusters_from, k_estimate),
        "backbone": backbone.name,
        "weights": backbone.weights,
        "data_config": {k: v for k, v in backbone.data_config.items()},
        "num_features": backbone.num_features,
        "device": str(device),
        "runtime": emb.runtime,
        "classes_from_split": f"{config.split}:{config.subset}" if config.split else None,
        **({"names": naming} if naming else {}),
    }
    counts = {"images_found": len(records), "images_clustered": len(kept), "images_skipped": len(skipped),
              "embeddings_reused": emb.n_reused, "embeddings_computed": emb.n_computed, "classes": n_classes,
              **({"unknown": n_unknown} if n_unknown is not None else {})}
    summary = cluster_summary(config, resolved, counts, clusters, timings, metrics)
    summary.write(config.out)
    return ClusterResult(paths, clusters, emb.vectors, y_true, skipped, metrics, summary.to_dict())


# ----------------------------------------------------------------------------------------------
# A store of `deepclust embed`, block by block

SCALE_ALGORITHMS = {"kmeans": ("sample_size", "lloyd_passes", "n_init", "max_iter", "k_sample_size"),
                    "spectral": ("n_groups", "n_neighbors", "sample_size", "lloyd_passes", "k_sample_size")}
K_SAMPLE_SIZE = 10_000  # rows that --n-clusters auto estimates k on


def estimate_k_of_store(table: EmbeddingTable, config, executor, sample_size: int = K_SAMPLE_SIZE):
    """``--n-clusters auto`` with ``--embeddings``: the number of clusters estimated as
    ``deepclust cluster`` does (:func:`estimate_k`), on a uniform random
    sample of ``sample_size`` rows of the store. Returns the
    :class:`~deepclust.cluster.KEstimate` and the sample's size."""
    sample = sample_rows(store_blocks(table), sample_size, executor, config.normalize, np.random.default_rng(config.seed),
                         config.progress)
    return estimate_k(sample, config, "sampled vectors"), len(sample)


def cluster_store(config):
    """``deepclust cluster --embeddings STORE``: cluster a store into a run folder of the
    usual form (assignments.csv, skipped.csv, summary.json, metrics.json with labels,
    config.yaml). The vectors stay in the store: summary.json points to it."""
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if not config.out:
        raise DeepclustError("no run folder given; pass --out RUN_DIR")
    if config.algorithm not in SCALE_ALGORITHMS:
        raise DeepclustError(f"--embeddings clusters with {' or '.join(SCALE_ALGORITHMS)}; "
                             f"'{config.algorithm}' needs all vectors in one process (drop --embeddings)")
    params = dict(config.cluster_params or {})
    unknown = sorted(set(params) - set(SCALE_ALGORITHMS[config.algorithm]))
    if unknown:
        raise DeepclustError(f"{config.algorithm} with --embeddings has no parameter {', '.join(unknown)}; "
                             f"its parameters are: {', '.join(SCALE_ALGORITHMS[config.algorithm])}")
    if config.labels not in (None, "folders"):
        raise DeepclustError(f"labels='{config.labels}' is not known; use folders")
    table = open_store(config.embeddings)
    check_writable(config.out)
    with lock_folder(config.out):
        runs.retire_outputs(config.out)
        return _cluster_store(config, table, params, timings, t_start)


def _cluster_store(config, table: EmbeddingTable, params: dict, timings: dict, t_start: float):
    backbone = table.info.get("backbone", {})
    if backbone.get("signature"):  # the run records the store's backbone, as `predict` needs
        config = dataclasses.replace(config, backbone=backbone["name"], weights=backbone["weights"],
                                     image_size=backbone["image_size"], fast_decode=backbone.get("fast_decode", False),
                                     pooling=backbone.get("pooling"))
    valid = np.flatnonzero(table.valid)
    y_true = [table.folders[i] for i in valid] if config.labels == "folders" else None
    n_classes = len(set(y_true)) if y_true is not None else None
    requested = check_n_clusters(config.n_clusters)
    n_clusters = requested if requested is not None else n_classes
    if n_clusters is None:
        raise DeepclustError("the number of clusters is unknown; pass --n-clusters K or auto (or --labels folders)")
    check_n_clusters(n_clusters, len(valid))
    if "k_sample_size" in params and requested != "auto":
        raise DeepclustError("k_sample_size is for --n-clusters auto only")
    k_sample = params.pop("k_sample_size", K_SAMPLE_SIZE)
    if isinstance(k_sample, bool) or not isinstance(k_sample, int) or k_sample < 3:
        raise DeepclustError(f"k_sample_size={k_sample!r} must be a whole number >= 3 (rows to estimate k on)")
    k_estimate, n_clusters_from = None, "--n-clusters" if requested is not None else "number of classes"
    with open_executor(config.scheduler) as executor:
        t = time.perf_counter()
        if n_clusters == "auto":
            k_estimate, sampled = estimate_k_of_store(table, config, executor, k_sample)
            n_clusters = k_estimate.n_clusters
            n_clusters_from = f"estimated ({k_estimate.method}) on a sample of {sampled} vectors"
            timings["k_estimation"] = time.perf_counter() - t
            t = time.perf_counter()
        record_k_estimate(config.out, k_estimate)
        if config.algorithm == "kmeans":
            result = kmeans_at_scale(table, n_clusters, executor, normalize=config.normalize,
                                     random_state=config.seed, progress=config.progress, **params)
            facts = {"sample_size": result.sample_size, "inertia": result.inertia_history}
        else:
            result = spectral_at_scale(table, n_clusters, executor, normalize=config.normalize,
                                       random_state=config.seed, progress=config.progress, **params)
            facts = result.facts
        clusters = result.labels
        timings["cluster"] = time.perf_counter() - t
        t = time.perf_counter()
        means = result.sums / np.maximum(result.counts, 1)[:, None]
        distances = cluster_distances(executor, table, clusters, means, config.normalize, config.progress)
        timings["distances"] = time.perf_counter() - t
        where = executor.name
    metrics = run_metrics(y_true, clusters)
    t = time.perf_counter()
    paths = [table.paths[i] for i in valid]
    runs.write_skipped(config.out, table.skipped)
    write_run_files(config, paths, clusters, distances, y_true, metrics)  # retire_outputs removed an old embeddings.npy
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    resolved = {
        **_k_resolved(n_clusters, n_clusters_from, k_estimate),
        "backbone": backbone.get("name"),
        "weights": backbone.get("resolved_weights", backbone.get("weights")),
        "data_config": backbone.get("data_config"),
        "num_features": table.n_features,
        "embeddings_store": os.path.abspath(table.folder),
        "executor": where,
        "at_scale": facts,
    }
    counts = {"images_found": len(table.paths), "images_clustered": len(valid), "images_skipped": len(table.skipped),
              "embeddings_reused": len(valid), "embeddings_computed": 0, "classes": n_classes}
    summary = cluster_summary(config, resolved, counts, clusters, timings, metrics)
    summary.write(config.out)
    return ClusterResult(paths, clusters, None, y_true, table.skipped, metrics, summary.to_dict())

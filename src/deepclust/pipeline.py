"""The main job: a folder of images in, clusters (and scores) in a run folder out.

    images ─► find_images ─► create_backbone ─► extract_embeddings ─► create_clusterer
           ─► assignments.csv, embeddings.npy, skipped.csv, summary.json, metrics.json
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust import runs
from deepclust.backbones import create_backbone, resolve_device
from deepclust.cluster import create_clusterer, get_clusterer_class
from deepclust.config import ClusterConfig, write_config
from deepclust.data import find_images, load_split
from deepclust.embeddings import EmbeddingStore, extract_embeddings
from deepclust.errors import DeepclustError
from deepclust.io import atomic_write, write_csv, write_json
from deepclust.metrics import repeat_clustering, score_clustering

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


def prepare_features(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    """The space that is clustered: embeddings, L2-normalised when ``normalize``."""
    X = np.asarray(vectors, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.maximum(norms, 1e-12)
    return X


def make_clusterer(algorithm: str, n_clusters: int, seed: int):
    """The clusterer a run uses, so ``evaluate`` repeats exactly what ``cluster`` did."""
    return create_clusterer(algorithm, n_clusters=n_clusters, random_state=seed)


def distances_to_centres(X: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of ``X`` to the mean of its cluster, shape (n,)."""
    ids, inverse = np.unique(clusters, return_inverse=True)
    centres = np.zeros((len(ids), X.shape[1]), dtype=np.float64)
    np.add.at(centres, inverse, X)
    centres /= np.bincount(inverse)[:, None]
    return np.linalg.norm(X - centres[inverse], axis=1)


def check_n_clusters(n_clusters: Any, n_images: int | None = None) -> int | None:
    """Validate ``--n-clusters``: a positive integer no larger than the number of images."""
    if n_clusters is None:
        return None
    if isinstance(n_clusters, str):
        if n_clusters.strip().lower() == "auto":
            raise DeepclustError(
                "n_clusters='auto' needs a cluster-number estimator, which this version does not "
                "have yet; pass an integer with --n-clusters K"
            )
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            raise DeepclustError(f"n_clusters={n_clusters!r} must be a positive integer") from None
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise DeepclustError(f"n_clusters={n_clusters!r} must be a positive integer")
    if n_images is not None and n_clusters > n_images:
        raise DeepclustError(
            f"n_clusters={n_clusters} must be <= the number of images ({n_images}); ask for fewer clusters"
        )
    return int(n_clusters)


def run_cluster(config: ClusterConfig) -> ClusterResult:
    """Run the main job described by ``config``; write and return its results."""
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    if not config.images:
        raise DeepclustError("no image folder given; pass IMAGES_DIR")
    if not config.out:
        raise DeepclustError("no run folder given; pass --out RUN_DIR")
    if config.labels is not None and config.labels not in LABEL_SOURCES:
        raise DeepclustError(f"labels='{config.labels}' is not known; use one of: {', '.join(LABEL_SOURCES)}")
    get_clusterer_class(config.algorithm)  # fail before hours of embedding, not after
    if (config.split is None) != (config.subset is None):
        raise DeepclustError("--split and --subset go together, e.g. --split eu-moths --subset test")
    requested_k = check_n_clusters(config.n_clusters)
    # (option, smallest value, None allowed): None workers means "choose by device"
    for name, minimum, optional in (("batch_size", 1, False), ("seed", 0, False), ("num_workers", 0, True)):
        value = getattr(config, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DeepclustError(f"{name}={value!r} must be an integer >= {minimum}")
    device = resolve_device(config.device)

    # data
    classes = load_split(config.split).classes(config.subset) if config.split else None
    t = time.perf_counter()
    records = find_images(config.images, classes=classes, exclude=[config.out])
    timings["discover"] = time.perf_counter() - t
    log.info("found %d images in '%s'", len(records), config.images)
    check_n_clusters(requested_k, len(records))
    if requested_k is None and config.labels is None:
        raise DeepclustError("the number of clusters is unknown; pass --n-clusters K (or --labels folders to use the number of classes)")

    # backbone, embeddings
    t = time.perf_counter()
    backbone = create_backbone(config.backbone, weights=config.weights, image_size=config.image_size)
    timings["load_backbone"] = time.perf_counter() - t
    os.makedirs(config.out, exist_ok=True)
    store = EmbeddingStore(runs.run_path(config.out, runs.CACHE), backbone.signature())
    log.info("embedding with %s (%s, %d px)", backbone.name, backbone.weights, backbone.image_size)
    emb = extract_embeddings(
        records,
        backbone,
        batch_size=config.batch_size,
        device=device,
        num_workers=config.num_workers,
        store=store,
        progress=config.progress,
    )
    timings["embed"] = emb.seconds
    kept = [records[i] for i in emb.indices]
    skipped = [(records[i].path, reason) for i, reason in emb.skipped]
    runs.write_skipped(config.out, skipped)
    if skipped:
        log.warning("skipped %d unreadable image(s); see %s", len(skipped), runs.run_path(config.out, runs.SKIPPED))
    if not kept:
        raise DeepclustError(f"none of the {len(records)} images could be read; see the reasons in {runs.SKIPPED}")
    y_true = [r.folder for r in kept] if config.labels == "folders" else None
    n_classes = len(set(y_true)) if y_true is not None else None
    n_clusters = requested_k if requested_k is not None else n_classes
    check_n_clusters(n_clusters, len(kept))

    # cluster
    t = time.perf_counter()
    X = prepare_features(emb.vectors, config.normalize)
    log.info("clustering %d images into %d clusters with %s", len(kept), n_clusters, config.algorithm)
    clusterer = make_clusterer(config.algorithm, n_clusters, config.seed)
    clusters = np.asarray(clusterer.fit_predict(X), dtype=np.int64)
    distances = distances_to_centres(X, clusters)
    timings["cluster"] = time.perf_counter() - t

    metrics = None
    if y_true is not None:
        metrics = score_clustering(y_true, clusters)
        metrics.update(n_clusters=int(len(np.unique(clusters))), n_classes=n_classes, n_images=len(kept))

    # outputs
    t = time.perf_counter()
    paths = [r.path for r in kept]
    runs.write_embeddings(config.out, emb.vectors)
    runs.write_assignments(config.out, paths, clusters, distances, y_true)
    write_config(runs.run_path(config.out, runs.CONFIG), config)
    if metrics is not None:
        runs.write_metrics(config.out, metrics)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    sizes = np.bincount(np.unique(clusters, return_inverse=True)[1])
    summary = {
        "command": "cluster",
        "config": config.to_dict(),
        "resolved": {
            "n_clusters": n_clusters,
            "n_clusters_from": "--n-clusters" if requested_k is not None else "number of classes",
            "backbone": backbone.name,
            "weights": backbone.weights,
            "data_config": {k: v for k, v in backbone.data_config.items()},
            "num_features": backbone.num_features,
            "device": str(device),
            "classes_from_split": f"{config.split}:{config.subset}" if config.split else None,
        },
        "seed": config.seed,
        "versions": runs.versions(),
        "counts": {
            "images_found": len(records),
            "images_clustered": len(kept),
            "images_skipped": len(skipped),
            "embeddings_reused": emb.n_reused,
            "embeddings_computed": emb.n_computed,
            "clusters": int(len(sizes)),
            "cluster_size_min": int(sizes.min()),
            "cluster_size_max": int(sizes.max()),
            "classes": n_classes,
        },
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "metrics": metrics,
    }
    runs.write_summary(config.out, summary)
    return ClusterResult(paths, clusters, emb.vectors, y_true, skipped, metrics, summary)


@dataclass
class Evaluation:
    """Scores of several algorithms repeated over seeds on one run's embeddings."""

    n_clusters: int
    scores: dict[str, Any]  # algorithm -> RepeatedScores

    def markdown(self) -> str:
        metrics = next(iter(self.scores.values())).metrics
        lines = [
            "| Cluster method | k | " + " | ".join(f"{m} AVG (SD)" for m in metrics) + " |",
            "|---|---|" + "---|" * len(metrics),
        ]
        for algorithm, result in self.scores.items():
            cells = result.formatted()
            lines.append(f"| {algorithm} | {self.n_clusters} | " + " | ".join(cells[m] for m in metrics) + " |")
        return "\n".join(lines) + "\n"

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        metrics = next(iter(self.scores.values())).metrics
        header = ["algorithm", "n_clusters", "n_runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "sd")]
        rows = []
        for algorithm, result in self.scores.items():
            mean, std = result.mean(), result.std()
            rows.append(
                [algorithm, self.n_clusters, len(result.runs)]
                + [f"{v:.6f}" for m in metrics for v in (mean[m], std[m])]
            )
        return header, rows


def evaluate_run(
    run_dir: str | os.PathLike,
    algorithms: list[str] | None = None,
    seeds: int = 5,
    n_clusters: int | None = None,
    out: str | os.PathLike | None = None,
) -> Evaluation:
    """Repeat clustering of a run's embeddings over seeds; write ``evaluation.md/.csv/.json``.

    Parameters
    ----------
    run_dir : path
        A run folder written by :func:`run_cluster` with true labels.
    algorithms : list of str, optional
        Clustering algorithms to compare; default: the run's own.
    seeds : int
        Number of runs, seeded 0 .. seeds-1.
    n_clusters : int, optional
        Default: the number of clusters of the run.
    out : path, optional
        Folder for the tables; default ``run_dir``.
    """
    run = runs.load_run(run_dir)
    if run.labels is None:
        raise DeepclustError(
            f"run '{run_dir}' has no true labels to score against; cluster again with --labels folders"
        )
    config = run.summary.get("config", {})
    algorithms = algorithms or [config.get("algorithm", "kmeans")]
    for algorithm in algorithms:
        get_clusterer_class(algorithm)
    if not isinstance(seeds, int) or seeds < 1:
        raise DeepclustError(f"seeds={seeds!r} must be a positive integer")
    k = check_n_clusters(n_clusters if n_clusters is not None else run.summary["resolved"]["n_clusters"], len(run.paths))
    X = prepare_features(run.embeddings, bool(config.get("normalize", True)))
    scores = {}
    for algorithm in algorithms:
        log.info("evaluating %s with k=%d over %d seeds", algorithm, k, seeds)
        scores[algorithm] = repeat_clustering(
            X, run.labels, lambda seed, a=algorithm: make_clusterer(a, k, seed), seeds=range(seeds)
        )
    evaluation = Evaluation(n_clusters=k, scores=scores)
    out = os.fspath(out or run_dir)
    with atomic_write(os.path.join(out, "evaluation.md")) as fh:
        fh.write(evaluation.markdown())
    header, rows = evaluation.rows()
    write_csv(os.path.join(out, "evaluation.csv"), header, rows)
    write_json(
        os.path.join(out, "evaluation.json"),
        {
            "run": os.fspath(run_dir),
            "n_clusters": k,
            "n_images": len(run.paths),
            "n_classes": len(set(run.labels)),
            "algorithms": {a: {"seeds": r.seeds, "runs": r.runs, "mean": r.mean(), "sd": r.std()} for a, r in scores.items()},
        },
    )
    return evaluation

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
from deepclust.cluster import K_METHODS, create_clusterer, estimate_n_clusters, get_clusterer_class, takes_n_clusters
from deepclust.config import ClusterConfig, write_config
from deepclust.data import find_images, split_classes
from deepclust.embeddings import EmbeddingStore, embedding_signature, extract_embeddings
from deepclust.errors import DeepclustError
from deepclust.io import atomic_write, check_writable, lock_folder, write_csv, write_json
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


def make_clusterer(algorithm: str, n_clusters: int | None, seed: int, params: dict | None = None,
                   device: str | None = None):
    """The clusterer a run uses, so ``evaluate`` repeats exactly what ``cluster`` did.

    ``n_clusters`` is passed only to algorithms that take it (density methods find
    their own); ``params`` are further parameters of the algorithm, checked by name;
    ``device`` goes to the algorithms that can compute on a GPU, unless ``params`` says.
    """
    cls = get_clusterer_class(algorithm)
    known = set(cls._get_param_names()) - {"n_clusters", "random_state"}
    params = dict(params or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise DeepclustError(
            f"{algorithm} has no parameter {', '.join(unknown)}; its parameters are: {', '.join(sorted(known))}"
        )
    if takes_n_clusters(algorithm):
        params["n_clusters"] = n_clusters
    if device is not None and "device" in known:
        params.setdefault("device", str(device))
    return create_clusterer(algorithm, random_state=seed, **params)


def cluster_centres(X: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, centres): the sorted cluster ids (noise ``-1`` has no centre) and the float64
    mean of the rows of ``X`` in each."""
    from deepclust.scale import cluster_sums

    member = clusters >= 0
    ids, inverse = np.unique(clusters[member], return_inverse=True)
    sums, counts = cluster_sums(X[member], inverse, len(ids))
    return ids, sums / counts[:, None]


def distances_to_centres(X: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of ``X`` to the mean of its cluster, shape (n,).

    Noise (cluster ``-1`` of the density methods) has no centre: its distance is NaN.
    """
    distances = np.full(len(clusters), np.nan)
    member = clusters >= 0
    if not member.any():
        return distances
    ids, centres = cluster_centres(X, clusters)
    distances[member] = np.linalg.norm(X[member] - centres[np.searchsorted(ids, clusters[member])], axis=1)
    return distances


def run_metrics(y_true, clusters: np.ndarray) -> dict[str, Any] | None:
    """metrics.json of a run: the scores against the true classes (None without them),
    the numbers of clusters, classes and images, and the share of noise if any."""
    if y_true is None:
        return None
    metrics = score_clustering(y_true, clusters)
    metrics.update(n_clusters=int(len(np.unique(clusters[clusters >= 0]))), n_classes=len(set(y_true)),
                   n_images=len(clusters))
    if (clusters < 0).any():
        metrics["noise_fraction"] = float(np.mean(clusters < 0))
    return metrics


def write_run_files(config: ClusterConfig, paths, clusters: np.ndarray, distances: np.ndarray, y_true,
                    metrics: dict | None) -> None:
    """assignments.csv, config.yaml and (with true classes) metrics.json of a run."""
    runs.write_assignments(config.out, paths, clusters, distances, y_true)
    write_config(runs.run_path(config.out, runs.CONFIG), config)
    if metrics is not None:
        runs.write_metrics(config.out, metrics)


def run_summary(config: ClusterConfig, resolved: dict, counts: dict, clusters: np.ndarray, timings: dict,
                metrics: dict | None) -> dict[str, Any]:
    """summary.json of a run of ``cluster``: ``counts`` (images found, clustered,
    skipped, embeddings reused and computed, classes) completed by the cluster sizes."""
    member = clusters >= 0
    sizes = np.bincount(np.unique(clusters[member], return_inverse=True)[1]) if member.any() else np.zeros(1, int)
    return {
        "command": "cluster",
        "config": config.to_dict(),
        "resolved": resolved,
        "seed": config.seed,
        "working_directory": os.getcwd(),
        "versions": runs.versions(),
        "counts": {**counts, "clusters": int((sizes > 0).sum()), "noise": int((~member).sum()),
                   "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max())},
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "metrics": metrics,
    }


def check_n_clusters(n_clusters: Any, n_images: int | None = None) -> int | str | None:
    """Validate ``--n-clusters``: ``"auto"`` or a positive integer no larger than the number of images."""
    if n_clusters is None:
        return None
    if isinstance(n_clusters, str):
        if n_clusters.strip().lower() == "auto":
            return "auto"
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


def estimate_k(X: np.ndarray, config: ClusterConfig, noun: str = "images"):
    """``--n-clusters auto``: the :class:`~deepclust.cluster.KEstimate` of the prepared
    features ``X`` by ``config.k_method`` (else the algorithm's own) over ``k_min`` to
    ``k_max`` (at most one less than the rows). ``noun`` names the rows in messages."""
    method = config.k_method or get_clusterer_class(config.algorithm).k_method
    k_max = min(config.k_max, len(X) - 1)
    if k_max < config.k_min:
        raise DeepclustError(f"--n-clusters auto needs more {noun} than k_min={config.k_min}; got {len(X)}")
    log.info("estimating the number of clusters (%s, k=%d..%d) from %d %s", method, config.k_min, k_max, len(X), noun)
    estimate = estimate_n_clusters(X, method=method, k_min=config.k_min, k_max=k_max, random_state=config.seed,
                                   metric=config.k_metric)
    log.info("estimated %d clusters", estimate.n_clusters)
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
    if config.embeddings:
        if config.images:
            raise DeepclustError("give IMAGES_DIR or --embeddings STORE, not both")
        from deepclust.scale import cluster_store

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
    make_clusterer(config.algorithm, 2, config.seed, config.cluster_params)._check_params()
    if config.k_method is not None and config.k_method not in K_METHODS:
        raise DeepclustError(f"k_method='{config.k_method}' is not known; use one of: {', '.join(K_METHODS)}")
    if config.k_method == "c2m":
        from deepclust.cluster.learned import C2MClusterer

        C2MClusterer(metric=config.k_metric)._check_params()  # the metric file exists
    density = not takes_n_clusters(config.algorithm)
    classes = split_classes(config.split, config.subset)
    requested_k = check_n_clusters(config.n_clusters)
    # (option, smallest value, None allowed): None workers means "choose by device"
    for name, minimum, optional in (("batch_size", 1, False), ("seed", 0, False), ("num_workers", 0, True),
                                    ("k_min", 1, False), ("k_max", 2, False)):
        value = getattr(config, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DeepclustError(f"{name}={value!r} must be an integer >= {minimum}")
    if config.k_max < config.k_min:
        raise DeepclustError(f"k_max={config.k_max} must be >= k_min={config.k_min}")
    device = resolve_device(config.device)
    check_writable(config.out)  # a read-only or full --out is found now, not after the embedding
    with lock_folder(config.out):
        return _cluster_images(config, classes, requested_k, density, device, timings, t_start)


def _cluster_images(config: ClusterConfig, classes, requested_k, density: bool, device, timings: dict,
                    t_start: float) -> ClusterResult:
    # data
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

    # backbone, embeddings
    t = time.perf_counter()
    backbone = create_backbone(config.backbone, weights=config.weights, image_size=config.image_size)
    timings["load_backbone"] = time.perf_counter() - t
    runs.retire_outputs(config.out)
    store = EmbeddingStore(runs.run_path(config.out, runs.CACHE), embedding_signature(backbone, config.fast_decode))
    log.info("embedding with %s (%s, %d px)", backbone.name, backbone.weights, backbone.image_size)
    emb = extract_embeddings(
        records,
        backbone,
        batch_size=config.batch_size,
        device=device,
        num_workers=config.num_workers,
        store=store,
        progress=config.progress,
        fast_decode=config.fast_decode,
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
    n_clusters = None if density else (requested_k if requested_k is not None else n_classes)
    n_clusters_from = "the algorithm" if density else ("--n-clusters" if requested_k is not None else "number of classes")
    check_n_clusters(n_clusters, len(kept))

    # cluster
    t = time.perf_counter()
    X = prepare_features(emb.vectors, config.normalize)
    k_estimate = estimate_k(X, config, "images") if n_clusters == "auto" else None
    record_k_estimate(config.out, k_estimate)
    if k_estimate is not None:
        n_clusters = k_estimate.n_clusters
        n_clusters_from = f"estimated ({k_estimate.method})"
    log.info("clustering %d images%s with %s", len(kept),
             f" into {n_clusters} clusters" if n_clusters is not None else "", config.algorithm)
    clusterer = make_clusterer(config.algorithm, n_clusters, config.seed, config.cluster_params, device=config.device)
    clusters = np.asarray(clusterer.fit_predict(X), dtype=np.int64)
    if n_clusters is None:
        n_clusters = int(clusterer.n_clusters_)
    distances = distances_to_centres(X, clusters)
    timings["cluster"] = time.perf_counter() - t

    metrics = run_metrics(y_true, clusters)

    # outputs
    t = time.perf_counter()
    paths = [r.path for r in kept]
    try:
        runs.write_embeddings(config.out, emb.vectors)
        write_run_files(config, paths, clusters, distances, y_true, metrics)
    except OSError as exc:
        raise DeepclustError(
            f"cannot write the results to '{config.out}' ({exc.strerror or exc}); the embeddings cached in "
            f"'{store.folder}' are kept and reused when the same command runs again: free space, or pass "
            "another --out") from None
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    resolved = {
        "n_clusters": n_clusters,
        "n_clusters_from": n_clusters_from,
        "k_estimate": k_estimate.to_dict() if k_estimate is not None else None,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "data_config": {k: v for k, v in backbone.data_config.items()},
        "num_features": backbone.num_features,
        "device": str(device),
        "classes_from_split": f"{config.split}:{config.subset}" if config.split else None,
    }
    counts = {"images_found": len(records), "images_clustered": len(kept), "images_skipped": len(skipped),
              "embeddings_reused": emb.n_reused, "embeddings_computed": emb.n_computed, "classes": n_classes}
    summary = run_summary(config, resolved, counts, clusters, timings, metrics)
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
            k = self.n_clusters if takes_n_clusters(algorithm) else "own"
            lines.append(f"| {algorithm} | {k} | " + " | ".join(cells[m] for m in metrics) + " |")
        return "\n".join(lines) + "\n"

    def rows(self) -> tuple[list[str], list[list[Any]]]:
        metrics = next(iter(self.scores.values())).metrics
        header = ["algorithm", "n_clusters", "n_runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "sd")]
        rows = []
        for algorithm, result in self.scores.items():
            mean, std = result.mean(), result.std()
            rows.append(
                [algorithm, self.n_clusters if takes_n_clusters(algorithm) else "own", len(result.runs)]
                + [f"{v:.6f}" for m in metrics for v in (mean[m], std[m])]
            )
        return header, rows


def evaluate_run(
    run_dir: str | os.PathLike,
    algorithms: list[str] | None = None,
    seeds: int = 5,
    n_clusters: int | None = None,
    out: str | os.PathLike | None = None,
    params: dict | None = None,
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
    params : dict, optional
        Further algorithm parameters (e.g. ``{"eps": 0.3}``), each given to the
        algorithms that take it; default: the run's own for the run's algorithm.
    """
    run = runs.load_run(run_dir)
    if run.labels is None:
        raise DeepclustError(
            f"run '{run_dir}' has no true labels to score against; cluster again with --labels folders"
        )
    config = run.summary.get("config", {})
    algorithms = algorithms or [config.get("algorithm", "kmeans")]
    per_algorithm = {}
    for algorithm in algorithms:
        known = set(get_clusterer_class(algorithm)._get_param_names())
        if params is None:
            own = config.get("cluster_params") or {} if algorithm == config.get("algorithm") else {}
            per_algorithm[algorithm] = dict(own)
        else:
            per_algorithm[algorithm] = {k: v for k, v in params.items() if k in known}
    if params:
        unused = sorted(set(params) - {k for p in per_algorithm.values() for k in p})
        if unused:
            raise DeepclustError(f"no algorithm of {', '.join(algorithms)} has parameter {', '.join(unused)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise DeepclustError(f"seeds={seeds!r} must be a positive integer")
    k = check_n_clusters(n_clusters if n_clusters is not None else run.summary["resolved"]["n_clusters"], len(run.paths))
    X = prepare_features(run.embeddings, bool(config.get("normalize", True)))
    scores = {}
    for algorithm in algorithms:
        log.info("evaluating %s with k=%d over %d seeds", algorithm, k, seeds)
        scores[algorithm] = repeat_clustering(
            X, run.labels, lambda seed, a=algorithm: make_clusterer(a, k, seed, per_algorithm[a]), seeds=range(seeds)
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
            "run_id": run.summary.get("run_id"),
            "n_clusters": k,
            "n_images": len(run.paths),
            "n_classes": len(set(run.labels)),
            "algorithms": {a: {"seeds": r.seeds, "runs": r.runs, "mean": r.mean(), "sd": r.std()} for a, r in scores.items()},
        },
    )
    return evaluation

"""The run folder: the one format every deepclust job writes and later jobs read.

::

    RUN_DIR/
      assignments.csv   path, cluster, distance[, label][, confidence]  one row per clustered image
      clusters.csv      cluster, size, confidence, cohesion, typical  one row per cluster
                        [, name_1, score_1, share_1, ... name_3, ...]  with --names
      embeddings.npy    float32 (n_images, n_features), rows in the order of assignments.csv
                        (a run of `cluster --embeddings STORE` has none: summary.json names the
                        store, whose valid rows are these rows)
      skipped.csv       path, reason                      images that could not be read
      summary.json      resolved config, versions, seed, counts, timings
      metrics.json      CA, ACC, NMI, AMI, ARI, ... (only when true labels are known)
      config.yaml       the resolved config, reusable with --config
      k_estimation.csv  k, score                          with --n-clusters auto: the curve
      cache/            embedding shards, reused by the next run and on resume

Every file is written atomically.
"""

from __future__ import annotations

import csv
import logging
import os
import platform
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from deepclust.config import ClusterConfig, write_config
from deepclust.errors import DeepclustError
from deepclust.features.store import open_store
from deepclust.io import read_csv, read_json, write_csv, write_json, write_npy
from deepclust.metrics import score_clustering
from deepclust.naming import TOP as NAME_COLUMNS  # the names per cluster in clusters.csv
from deepclust.version import __version__

log = logging.getLogger("deepclust")

ASSIGNMENTS = "assignments.csv"
EMBEDDINGS = "embeddings.npy"
SKIPPED = "skipped.csv"
SUMMARY = "summary.json"
METRICS = "metrics.json"
CLUSTERS = "clusters.csv"
CONFIG = "config.yaml"
CACHE = "cache"
K_ESTIMATION = "k_estimation.csv"


def run_path(run_dir: str | os.PathLike, name: str) -> str:
    return os.path.join(os.fspath(run_dir), name)


def write_assignments(
    run_dir: str | os.PathLike,
    paths: Sequence[str],
    clusters: np.ndarray,
    distances: np.ndarray,
    labels: Sequence[str] | None = None,
    confidence: np.ndarray | None = None,
    names: dict | None = None,
) -> None:
    """Write ``assignments.csv``: one row per image, its cluster, distance to the centre and
    (when given) confidence (:func:`deepclust.cluster.space.centre_margins`).

    Noise (cluster ``-1``) has an empty distance and confidence.
    """
    def number(v) -> str:
        return f"{v:.6f}" if np.isfinite(v) else ""

    # confidence last: the columns of earlier versions keep their places
    header = ["path", "cluster", "distance"] + (["label"] if labels is not None else []) + \
        (["confidence"] if confidence is not None else [])
    rows = (
        [p, int(c), number(d)] + ([labels[i]] if labels is not None else [])
        + ([number(confidence[i])] if confidence is not None else [])
        for i, (p, c, d) in enumerate(zip(paths, clusters, distances))
    )
    write_csv(run_path(run_dir, ASSIGNMENTS), header, rows)
    if confidence is not None:
        write_clusters(run_dir, paths, clusters, distances, confidence, names)


def write_clusters(run_dir: str | os.PathLike, paths: Sequence[str], clusters: np.ndarray, distances: np.ndarray,
                   confidence: np.ndarray, names: dict | None = None) -> None:
    """Write ``clusters.csv``: per cluster its size, confidence (its images' median margin),
    cohesion (their mean distance to the centre) and most typical image (nearest the centre);
    with ``names`` (cluster -> :class:`deepclust.naming.ClusterName` list) its three most
    likely names, each with its score and share of the images."""
    rows = []
    for c in np.unique(clusters[clusters >= 0]):
        members = np.flatnonzero(clusters == c)
        typical = members[np.nanargmin(distances[members])] if np.isfinite(distances[members]).any() else members[0]
        margins = confidence[members]
        row = [int(c), len(members), f"{np.nanmedian(margins):.6f}" if np.isfinite(margins).any() else "",
               f"{np.nanmean(distances[members]):.6f}", paths[typical]]
        if names is not None:
            found = list(names.get(int(c), []))[:NAME_COLUMNS]
            for k in range(NAME_COLUMNS):
                row += [found[k].name, f"{found[k].score:.4f}", f"{found[k].share:.4f}"] if k < len(found) else ["", "", ""]
        rows.append(row)
    header = ["cluster", "size", "confidence", "cohesion", "typical"]
    if names is not None:
        header += [f"{what}_{k + 1}" for k in range(NAME_COLUMNS) for what in ("name", "score", "share")]
    write_csv(run_path(run_dir, CLUSTERS), header, rows)


def read_clusters(run_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """clusters.csv by cluster id ({} for runs without one)."""
    path = run_path(run_dir, CLUSTERS)
    return {r["cluster"]: r for r in read_csv(path)} if os.path.isfile(path) else {}


def cluster_names(row: dict[str, str]) -> list[tuple[str, float, float]]:
    """The (name, score, share) of a clusters.csv row, best first ([] for a run without names)."""
    out = []
    for k in range(1, NAME_COLUMNS + 1):
        if row.get(f"name_{k}"):
            out.append((row[f"name_{k}"], float(row[f"score_{k}"]), float(row[f"share_{k}"])))
    return out


def write_skipped(run_dir: str | os.PathLike, skipped: Sequence[tuple[str, str]]) -> None:
    """Write ``skipped.csv`` (always, with a header, so an empty file means none skipped)."""
    write_csv(run_path(run_dir, SKIPPED), ["path", "reason"], skipped)


def write_embeddings(run_dir: str | os.PathLike, vectors: np.ndarray) -> None:
    write_npy(run_path(run_dir, EMBEDDINGS), np.asarray(vectors, dtype=np.float32))


def write_summary(run_dir: str | os.PathLike, summary: "RunSummary | dict[str, Any]") -> None:
    """Write summary.json through :class:`RunSummary` (last: its presence marks a finished
    run), with the ``run_id`` that outputs derived from the run (report, predict,
    evaluation) record."""
    if not isinstance(summary, RunSummary):
        summary = RunSummary.from_dict(summary)
    summary.write(run_dir)


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    write_json(run_path(run_dir, METRICS), metrics)


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
                    metrics: dict | None, confidence: np.ndarray | None = None, names: dict | None = None) -> None:
    """assignments.csv (and clusters.csv, with ``confidence``; its names with ``names``),
    config.yaml and (with true classes) metrics.json of a run."""
    write_assignments(config.out, paths, clusters, distances, y_true, confidence, names)
    write_config(run_path(config.out, CONFIG), config)
    if metrics is not None:
        write_metrics(config.out, metrics)


@dataclass
class RunSummary:
    """summary.json: what made a run, with what result. The one type that writes it
    (``cluster``, ``cluster --embeddings``, an end-to-end method's ``train``) and reads it.

    Attributes
    ----------
    command : str
        ``cluster`` or ``train`` (an end-to-end method, named by ``method``).
    config : dict
        The resolved configuration.
    resolved : dict
        What the run chose or found: number of clusters and where it came from, backbone,
        weights, preprocessing, device, and ``normalized`` (whether the clustered space is
        the L2-normalised embeddings).
    counts, timings_seconds, metrics : dict
    method : str or None
    extra : dict
        Further top-level entries of a command (an end-to-end method's ``runs`` and ``scores``).
    """

    command: str
    config: dict
    resolved: dict
    seed: int
    counts: dict
    timings_seconds: dict
    metrics: dict | None = None
    method: str | None = None
    extra: dict = field(default_factory=dict)
    working_directory: str = field(default_factory=os.getcwd)
    versions: dict = field(default_factory=lambda: versions())
    run_id: str = field(default_factory=lambda: f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")

    FIELDS = ("command", "method", "config", "resolved", "seed", "working_directory", "versions", "counts",
              "timings_seconds", "metrics", "run_id")

    @property
    def normalized(self) -> bool:
        """Whether the run clustered L2-normalised embeddings (``predict`` must do the same).
        Recorded in ``resolved``; runs written before it say so by their command."""
        if "normalized" in self.resolved:
            return bool(self.resolved["normalized"])
        return bool(self.config.get("normalize", True)) if self.command == "cluster" else False

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.FIELDS if k != "method" or self.method is not None}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunSummary":
        known = {k: data[k] for k in cls.FIELDS if k in data}
        known.setdefault("command", "")
        for key, empty in (("config", {}), ("resolved", {}), ("seed", 0), ("counts", {}), ("timings_seconds", {})):
            known.setdefault(key, empty)
        return cls(**known, extra={k: v for k, v in data.items() if k not in cls.FIELDS})

    def write(self, run_dir: str | os.PathLike) -> None:
        """Write summary.json, last of a run's files: its presence marks a finished run."""
        write_json(run_path(run_dir, SUMMARY), self.to_dict())

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "RunSummary":
        return cls.from_dict(read_summary(run_dir))


def cluster_summary(config: ClusterConfig, resolved: dict, counts: dict, clusters: np.ndarray, timings: dict,
                    metrics: dict | None) -> RunSummary:
    """The summary of a run of ``cluster``: ``counts`` (images found, clustered, skipped,
    embeddings reused and computed, classes) completed by the cluster sizes."""
    member = clusters >= 0
    sizes = np.bincount(np.unique(clusters[member], return_inverse=True)[1]) if member.any() else np.zeros(1, int)
    return RunSummary(
        command="cluster", config=config.to_dict(), resolved={**resolved, "normalized": bool(config.normalize)},
        seed=config.seed,
        counts={**counts, "clusters": int((sizes > 0).sum()), "noise": int((~member).sum()),
                "cluster_size_min": int(sizes.min()), "cluster_size_max": int(sizes.max())},
        timings_seconds={k: round(v, 3) for k, v in timings.items()}, metrics=metrics)


# What a run writes, and what later commands derive from it.
RUN_OUTPUTS = (ASSIGNMENTS, EMBEDDINGS, SKIPPED, METRICS, CONFIG, K_ESTIMATION, CLUSTERS, "history.csv")
DERIVED_OUTPUTS = ("report", "predict", "evaluation.md", "evaluation.csv", "evaluation.json")
RETIRED = "retired"


def retire_outputs(run_dir: str | os.PathLike) -> str | None:
    """Before a new run writes into ``run_dir``: remove summary.json first (the folder no
    longer reads as a finished run), then the old run's own outputs (the new run writes
    them again, or they would describe the old one, as a stale metrics.json would), and
    move what was derived from it (report/, predict/, evaluation.*) to
    ``retired/<old run id>/``. The embedding cache stays. Returns that folder, if any."""
    run_dir = os.fspath(run_dir)
    old_id = None
    if os.path.isfile(run_path(run_dir, SUMMARY)):
        try:
            old_id = read_summary(run_dir).get("run_id")
        except DeepclustError:
            pass
        os.remove(run_path(run_dir, SUMMARY))
    for name in RUN_OUTPUTS:
        if os.path.isfile(run_path(run_dir, name)):
            os.remove(run_path(run_dir, name))
    derived = [n for n in DERIVED_OUTPUTS if os.path.lexists(run_path(run_dir, n))]
    if not derived:
        return None
    target = os.path.join(run_dir, RETIRED, str(old_id or f"before-{time.strftime('%Y%m%dT%H%M%S')}"))
    os.makedirs(target, exist_ok=True)
    for name in derived:
        os.replace(run_path(run_dir, name), os.path.join(target, name))
    log.warning("the outputs derived from the previous run in '%s' (%s) were moved to '%s'", run_dir,
                ", ".join(derived), target)
    return target


@dataclass
class Run:
    """A finished run folder, as read back by :func:`load_run`.

    Attributes
    ----------
    paths : list of str
    clusters : ndarray of shape (n_images,)
    embeddings : ndarray of shape (n_images, n_features)
    labels : list of str or None
        True classes, when the run knew them.
    summary : dict
    distances : ndarray of shape (n_images,) or None
        Distance of each image to its cluster's centre, NaN for noise.
    """

    folder: str
    paths: list[str]
    clusters: np.ndarray
    embeddings: np.ndarray
    labels: list[str] | None
    summary: dict[str, Any]
    distances: np.ndarray | None = None  # per image, to its cluster's centre (NaN for noise)
    confidence: np.ndarray | None = None  # per image, centre_margins (NaN for noise); None in older runs

    def resolve(self, path: str) -> str:
        """An image path of the run as a path that opens from here: paths are stored as
        given (relative ones to the folder the run was started in, ``working_directory``
        of summary.json)."""
        if os.path.isabs(path) or os.path.exists(path):
            return path
        started = self.summary.get("working_directory")
        return os.path.join(started, path) if started else path

    def resolve_data(self, images: str, dataset: dict | None) -> tuple[str, dict | None]:
        """The run's image folder and benchmark ``dataset`` ({name, source}) settings with
        relative paths resolved like the images."""
        if dataset:
            dataset = {**dataset, "source": self.resolve(dataset["source"])} if dataset.get("source") else dict(dataset)
        return (self.resolve(images) if images else images), dataset

    def backbone_weights(self) -> str:
        """The run's ``weights`` setting, a relative checkpoint path resolved like the images."""
        weights = self.summary.get("config", {}).get("weights", "pretrained")
        return weights if weights in ("pretrained", "random") else self.resolve(weights)


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """summary.json of a run folder; a damaged one is one clear error."""
    path = run_path(run_dir, SUMMARY)
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise DeepclustError(f"'{path}' is damaged (not a JSON object); run the command that made the run again")
    return summary


def _read_embeddings(path: str) -> np.ndarray:
    try:
        embeddings = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001  object arrays (pickles), truncated or foreign files
        raise DeepclustError(f"'{path}' is damaged or not a float array ({type(exc).__name__}); "
                             "run `deepclust cluster` again") from None
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.dtype.kind != "f":
        raise DeepclustError(f"'{path}' holds {getattr(embeddings, 'dtype', '?')} of shape "
                             f"{getattr(embeddings, 'shape', '?')}, not float rows (images x features); "
                             "run `deepclust cluster` again")
    return embeddings


def _parse_assignments(path: str, rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(clusters, distances) of assignments.csv, each value checked."""
    if rows and not {"path", "cluster", "distance"} <= set(rows[0]):
        raise DeepclustError(f"'{path}' is damaged: it lacks the columns path, cluster, distance; "
                             "run `deepclust cluster` again")
    clusters = np.empty(len(rows), dtype=np.int64)
    distances = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            cluster = int(row["cluster"])
            distance = float(row["distance"]) if row["distance"] else np.nan
        except (TypeError, ValueError):
            raise DeepclustError(f"'{path}' is damaged at row {i + 2}: cluster {row.get('cluster')!r}, distance "
                                 f"{row.get('distance')!r} are not numbers; run `deepclust cluster` again") from None
        if not -1 <= cluster < 2**31 or distance < 0:
            raise DeepclustError(f"'{path}' is damaged at row {i + 2}: cluster {cluster} (ids run from -1 for noise "
                                 f"to below 2^31), distance {distance}; run `deepclust cluster` again")
        clusters[i], distances[i] = cluster, distance
    return clusters, distances


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by ``deepclust cluster``; every file is checked, and a
    damaged one is one error naming it."""
    run_dir = os.fspath(run_dir)
    needed = [ASSIGNMENTS, SUMMARY]
    missing = [n for n in needed if not os.path.isfile(run_path(run_dir, n))]
    if missing:
        raise DeepclustError(
            f"'{run_dir}' is not a finished run folder (missing {', '.join(missing)}); "
            "run `deepclust cluster IMAGES --out RUN_DIR` first"
        )
    summary = read_summary(run_dir)
    try:
        rows = read_csv(run_path(run_dir, ASSIGNMENTS))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DeepclustError(f"'{run_path(run_dir, ASSIGNMENTS)}' is damaged ({exc}); "
                             "run `deepclust cluster` again") from None
    resolved = summary.get("resolved")
    store = resolved.get("embeddings_store") if isinstance(resolved, dict) else None
    if store:  # a run of `cluster --embeddings`: the vectors stay in the store
        embeddings = open_store(store).read()
    elif os.path.isfile(run_path(run_dir, EMBEDDINGS)):
        embeddings = _read_embeddings(run_path(run_dir, EMBEDDINGS))
    else:
        raise DeepclustError(f"'{run_dir}' is not a finished run folder (missing {EMBEDDINGS}); "
                             "run `deepclust cluster IMAGES --out RUN_DIR` first")
    if len(rows) != len(embeddings):
        raise DeepclustError(
            f"'{run_dir}' is inconsistent: {len(rows)} assignments but {len(embeddings)} embeddings; "
            "run `deepclust cluster` again"
        )
    clusters, distances = _parse_assignments(run_path(run_dir, ASSIGNMENTS), rows)
    has_labels = bool(rows) and "label" in rows[0]
    confidence = None
    if rows and "confidence" in rows[0]:
        try:
            confidence = np.array([float(r["confidence"]) if r["confidence"] else np.nan for r in rows])
        except ValueError:
            raise DeepclustError(f"'{run_path(run_dir, ASSIGNMENTS)}' is damaged: a confidence is not a number; "
                                 "run `deepclust cluster` again") from None
    return Run(
        folder=run_dir,
        paths=[r["path"] for r in rows],
        clusters=clusters,
        embeddings=embeddings,
        labels=[r["label"] for r in rows] if has_labels else None,
        summary=summary,
        distances=distances,
        confidence=confidence,
    )


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a run's results."""
    import PIL
    import scipy
    import sklearn
    import timm  # deferred, as torch: a run folder is read (report, export) without them
    import torch

    return {
        "deepclust": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
    }

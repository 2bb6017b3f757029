"""The run folder: the one format every deepclust job writes and later jobs read.

::

    RUN_DIR/
      assignments.csv   path, cluster, distance[, label]  one row per clustered image
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

import json
import os
import platform
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.io import read_csv, write_csv, write_json, write_npy

ASSIGNMENTS = "assignments.csv"
EMBEDDINGS = "embeddings.npy"
SKIPPED = "skipped.csv"
SUMMARY = "summary.json"
METRICS = "metrics.json"
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
) -> None:
    """Write ``assignments.csv``: one row per image, its cluster and distance to the centre.

    Noise (cluster ``-1``) has an empty distance.
    """
    header = ["path", "cluster", "distance"] + (["label"] if labels is not None else [])
    rows = (
        [p, int(c), f"{d:.6f}" if np.isfinite(d) else ""] + ([labels[i]] if labels is not None else [])
        for i, (p, c, d) in enumerate(zip(paths, clusters, distances))
    )
    write_csv(run_path(run_dir, ASSIGNMENTS), header, rows)


def write_skipped(run_dir: str | os.PathLike, skipped: Sequence[tuple[str, str]]) -> None:
    """Write ``skipped.csv`` (always, with a header, so an empty file means none skipped)."""
    write_csv(run_path(run_dir, SKIPPED), ["path", "reason"], skipped)


def write_embeddings(run_dir: str | os.PathLike, vectors: np.ndarray) -> None:
    write_npy(run_path(run_dir, EMBEDDINGS), np.asarray(vectors, dtype=np.float32))


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    write_json(run_path(run_dir, SUMMARY), summary)


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> None:
    write_json(run_path(run_dir, METRICS), metrics)


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


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by ``deepclust cluster``."""
    run_dir = os.fspath(run_dir)
    needed = [ASSIGNMENTS, SUMMARY]
    missing = [n for n in needed if not os.path.isfile(run_path(run_dir, n))]
    if missing:
        raise DeepclustError(
            f"'{run_dir}' is not a finished run folder (missing {', '.join(missing)}); "
            "run `deepclust cluster IMAGES --out RUN_DIR` first"
        )
    with open(run_path(run_dir, SUMMARY), encoding="utf-8") as fh:
        summary = json.load(fh)
    rows = read_csv(run_path(run_dir, ASSIGNMENTS))
    store = summary.get("resolved", {}).get("embeddings_store")
    if store:  # a run of `cluster --embeddings`: the vectors stay in the store
        from deepclust.scale import open_store

        embeddings = open_store(store).read()
    elif os.path.isfile(run_path(run_dir, EMBEDDINGS)):
        embeddings = np.load(run_path(run_dir, EMBEDDINGS))
    else:
        raise DeepclustError(f"'{run_dir}' is not a finished run folder (missing {EMBEDDINGS}); "
                             "run `deepclust cluster IMAGES --out RUN_DIR` first")
    if len(rows) != len(embeddings):
        raise DeepclustError(
            f"'{run_dir}' is inconsistent: {len(rows)} assignments but {len(embeddings)} embeddings; "
            "run `deepclust cluster` again"
        )
    has_labels = bool(rows) and "label" in rows[0]
    return Run(
        folder=run_dir,
        paths=[r["path"] for r in rows],
        clusters=np.array([int(r["cluster"]) for r in rows], dtype=np.int64),
        embeddings=embeddings,
        labels=[r["label"] for r in rows] if has_labels else None,
        summary=summary,
        distances=np.array([float(r["distance"]) if r["distance"] else np.nan for r in rows], dtype=np.float64),
    )


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a run's results."""
    import PIL
    import scipy
    import sklearn
    import timm
    import torch

    import deepclust

    return {
        "deepclust": deepclust.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
    }

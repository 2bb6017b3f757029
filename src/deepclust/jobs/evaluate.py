"""``deepclust evaluate``: a run's embeddings clustered again over seeds, AVG (SD) tables."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from deepclust import runs
from deepclust.cluster import get_clusterer_class, takes_n_clusters
from deepclust.cluster.space import check_n_clusters, make_clusterer, prepare_features
from deepclust.errors import DeepclustError
from deepclust.io import atomic_write, write_csv, write_json
from deepclust.metrics import repeat_clustering

log = logging.getLogger("deepclust")


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
    per_algorithm = _parameters(algorithms, config, params)
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
    _write(os.fspath(out or run_dir), run_dir, run, evaluation)
    return evaluation


def _parameters(algorithms: list[str], config: dict, params: dict | None) -> dict[str, dict]:
    """Each algorithm's parameters: the run's own for the run's algorithm when ``params`` is
    None, else those of ``params`` it takes (a parameter no algorithm takes is an error)."""
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
    return per_algorithm


def _write(out: str, run_dir, run: runs.Run, evaluation: Evaluation) -> None:
    """evaluation.md, evaluation.csv and evaluation.json (which records the run's id)."""
    with atomic_write(os.path.join(out, "evaluation.md")) as fh:
        fh.write(evaluation.markdown())
    header, rows = evaluation.rows()
    write_csv(os.path.join(out, "evaluation.csv"), header, rows)
    write_json(os.path.join(out, "evaluation.json"), {
        "run": os.fspath(run_dir), "run_id": run.summary.get("run_id"), "n_clusters": evaluation.n_clusters,
        "n_images": len(run.paths), "n_classes": len(set(run.labels)),
        "algorithms": {a: {"seeds": r.seeds, "runs": r.runs, "mean": r.mean(), "sd": r.std()}
                       for a, r in evaluation.scores.items()},
    })

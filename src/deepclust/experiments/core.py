"""The core paper's protocol as one resumable command: ``deepclust experiment CONFIG``.

For one dataset (a folder of class subfolders and a train/val/test class split):

1. train the classic baseline and the episodic method for every ``alpha`` of the list,
   each selected on the validation classes by K-means cluster accuracy;
2. choose the episodic ``alpha`` whose selected model clusters the validation classes best;
   fit the linear scatter head (``deepclust train --method linear``) on the pretrained
   features (``linear``) and on that model's features (``episodic+linear``), its size and
   shrinkage chosen on the validation classes too;
3. embed the test classes with each model (pretrained, classic, every episodic alpha, heads)
   through the same path as ``deepclust cluster --weights``, and cluster them with
   K-means and Spectral clustering over several seeds;
4. write the paper's Table 1 (CA, NMI, AMI, ARI as AVG (SD)), every run's figures, and
   the ARI/AMI-against-alpha figure (the paper's Figure 3).

Every step skips what a previous, interrupted invocation finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from deepclust import runs as run_folders
from deepclust.cluster.space import make_clusterer, prepare_features
from deepclust.config import ClusterConfig, TrainConfig, build_config, write_config
from deepclust.data.datasets import prepare_dataset
from deepclust.errors import DeepclustError
from deepclust.experiments.common import check_sections, read_config
from deepclust.features.backbones import create_backbone, save_backbone
from deepclust.io import atomic_write, save_figure, write_csv, write_json
from deepclust.jobs.cluster import run_cluster
from deepclust.jobs.evaluate import evaluate_run
from deepclust.methods import create_method
from deepclust.metrics import RepeatedScores, score_clustering

log = logging.getLogger("deepclust")

TRAININGS = ("pretrained", "classic", "episodic", "linear", "episodic+linear")


@dataclass
class ExperimentConfig:
    """Configuration of ``deepclust experiment``.

    Attributes
    ----------
    name : str
    out : str
        Experiment folder (``train/<run>``, ``test/<run>``, ``table1.md``, ``results.csv``,
        ``results.json``, ``figure3.png``).
    dataset : dict
        Optional ``{name: omniglot, source: FOLDER}``: lay out a benchmark distributed
        in another form as class folders in ``images`` first (once).
    images, split : str
        Folder of class subfolders and its class split (with train, val and test subsets).
        ``~`` and ``$VARS`` in ``images`` and ``out`` are expanded.
    train : dict
        :class:`deepclust.config.TrainConfig` settings shared by every training run.
    classic, episodic, linear : dict
        Settings for one method only (override ``train``).
    trainings : list of str
        Which of ``pretrained``, ``classic``, ``episodic``, ``linear`` (the scatter head on
        the pretrained backbone) and ``episodic+linear`` (on the selected episodic model)
        to run.
    alphas : list of float
        Scatter-loss weights of the episodic runs.
    algorithms : list of str
        Clusterers applied to the test classes.
    cluster_params : dict
        Further parameters per algorithm, e.g. ``{spectral: {n_neighbors: 2}}``.
    seeds : int
        Seeded clustering runs per algorithm.
    test_subset : str
    test_group_by : str or None
        A regular expression with one group over class names: the test classes are
        clustered group by group (each into its own number of classes) and the scores
        averaged over groups, per seed. Omniglot's one-shot runs: ``eval-(run\\d+)-``.
    normalize : bool
        L2-normalise test embeddings before clustering.
    """

    name: str = "experiment"
    out: str = ""
    dataset: dict = dataclasses.field(default_factory=dict)
    images: str = ""
    split: str = ""
    train: dict = dataclasses.field(default_factory=dict)
    classic: dict = dataclasses.field(default_factory=dict)
    episodic: dict = dataclasses.field(default_factory=dict)
    linear: dict = dataclasses.field(default_factory=dict)
    trainings: list = dataclasses.field(default_factory=lambda: list(TRAININGS))
    alphas: list = dataclasses.field(default_factory=lambda: [0.0, 0.1, 0.5, 1.0])
    algorithms: list = dataclasses.field(default_factory=lambda: ["kmeans", "spectral"])
    cluster_params: dict = dataclasses.field(default_factory=dict)
    seeds: int = 5
    test_subset: str = "test"
    test_group_by: str | None = None
    normalize: bool = True
    progress: bool = True


def load_experiment(path: str | os.PathLike, **overrides: Any) -> ExperimentConfig:
    """Read an experiment config; relative data paths are taken from the current folder."""
    config = read_config(ExperimentConfig, path, overrides)
    if config.test_group_by is not None:
        try:
            if re.compile(config.test_group_by).groups != 1:
                raise re.error("needs exactly one group")
        except re.error as exc:
            raise DeepclustError(f"test_group_by={config.test_group_by!r} is not a regular expression with one "
                                 f"group ({exc}); e.g. 'eval-(run\\d+)-'") from None

    if not isinstance(config.cluster_params, dict):
        raise DeepclustError(f"cluster_params={config.cluster_params!r} must map algorithm: {{parameter: value}}")
    for algorithm in config.algorithms:
        make_clusterer(algorithm, "auto", 0, config.cluster_params.get(algorithm)).check_params()
    extra = sorted(set(config.cluster_params) - set(config.algorithms))
    if extra:
        raise DeepclustError(f"cluster_params names {', '.join(extra)}, which is not in algorithms")
    if config.dataset and set(config.dataset) != {"name", "source"}:
        raise DeepclustError(f"dataset={config.dataset!r} must be {{name: omniglot, source: FOLDER}}")
    unknown = [t for t in config.trainings if t not in TRAININGS]
    if unknown:
        raise DeepclustError(f"unknown training(s) {', '.join(unknown)}; choose from: {', '.join(TRAININGS)}")
    if "episodic+linear" in config.trainings and "episodic" not in config.trainings:
        raise DeepclustError("training 'episodic+linear' fits the head on the episodic model: add 'episodic' to "
                             "trainings")
    check_sections([(f"section '{s}'", getattr(config, s)) for s in ("train", "classic", "episodic", "linear")],
                   {f.name for f in dataclasses.fields(TrainConfig)})
    return config


def _train_config(config: ExperimentConfig, method: str, alpha: float | None, run: str,
                  weights: str | None = None) -> TrainConfig:
    values = {**config.train, **getattr(config, method)}
    if weights is not None:  # the head on a trained model's features
        values["weights"] = weights
    values.update(method=method, images=config.images, split=config.split, progress=config.progress,
                  out=os.path.join(config.out, "train", run))
    values.setdefault("cache_dir", os.path.join(config.out, "cache"))
    if alpha is not None:
        values["alpha"] = float(alpha)
    return build_config(TrainConfig, None, **values)


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) the whole protocol; return the results also written to ``config.out``."""

    t_start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    write_config(os.path.join(config.out, "experiment.yaml"), config)
    if config.dataset:
        log.info("preparing %s from %s in %s", config.dataset["name"], config.dataset["source"], config.images)
        prepare_dataset(config.dataset["name"], config.dataset["source"], config.images)
    runs: dict[str, dict[str, Any]] = {}  # run name -> {training, alpha, weights, val_CA}
    base = {**config.train}
    start = _starting_weights(config)  # what the pretrained row and the linear head embed with
    if "pretrained" in config.trainings:
        runs["pretrained"] = {"training": "pretrained", "alpha": None, "weights": start, "val_CA": None}
    plan = []
    if "episodic" in config.trainings:
        plan += [("episodic", a, f"episodic-alpha{a:g}") for a in config.alphas]
    if "classic" in config.trainings:
        plan.append(("classic", None, "classic"))
    if "linear" in config.trainings:
        plan.append(("linear", None, "linear"))
    for i, (method, alpha, run) in enumerate(plan, 1):
        log.info("[%d/%d] training %s", i, len(plan), run)
        weights = start if method == "linear" else None
        runs[run] = _train(_train_config(config, method, alpha, run, weights), method, alpha)
    if "episodic+linear" in config.trainings:  # on the episodic model chosen on the validation classes
        chosen = _best_alpha_run(runs)
        log.info("training the scatter head on %s's features", chosen)
        runs["episodic+linear"] = _train(_train_config(config, "linear", None, "episodic+linear",
                                                       weights=runs[chosen]["weights"]), "linear", None)
        runs["episodic+linear"].update(training="episodic+linear", alpha=runs[chosen]["alpha"])

    results: dict[str, Any] = {}
    for i, (run, info) in enumerate(runs.items(), 1):
        log.info("[%d/%d] clustering the %s classes with the %s model", i, len(runs), config.test_subset, run)
        cluster_config = ClusterConfig(
            images=config.images, out=os.path.join(config.out, "test", run), labels="folders",
            split=config.split, subset=config.test_subset, algorithm=config.algorithms[0],
            backbone=base.get("backbone", ClusterConfig.backbone), weights=info["weights"],
            image_size=base.get("image_size"), batch_size=base.get("batch_size", 32), device=base.get("device", "cpu"),
            normalize=config.normalize, progress=config.progress,
        )
        run_cluster(cluster_config)
        if config.test_group_by:
            scores = grouped_scores(cluster_config.out, config.algorithms, config.seeds, config.test_group_by,
                                    config.cluster_params)
        else:
            # one call per algorithm, each with its own parameters and tables folder
            scores = {a: evaluate_run(cluster_config.out, [a], seeds=config.seeds, params=config.cluster_params.get(a, {}),
                                      out=os.path.join(cluster_config.out, "evaluation", a)).scores[a]
                      for a in config.algorithms}
        results[run] = {**info, "scores": {a: {"runs": r.runs, "mean": r.mean(), "sd": r.std()}
                                           for a, r in scores.items()}}

    best_alpha_run = _best_alpha_run(results)
    episodic = {r: v for r, v in results.items() if v["training"] == "episodic"}
    summary = {"name": config.name, "config": dataclasses.asdict(config), "runs": results,
               "best_alpha_run": best_alpha_run,
               "best_alpha": results[best_alpha_run]["alpha"] if best_alpha_run else None,
               "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(os.path.join(config.out, "results.json"), summary)
    _write_tables(config, results, best_alpha_run)
    if episodic:
        _plot_alpha(config, results)
    return summary


def _starting_weights(config: ExperimentConfig) -> str:
    """The ``train`` section's weights; for ``random``, a seeded file of them in the experiment
    folder, so that the rows that start from them are reproducible and start alike."""
    base = config.train
    weights = base.get("weights", "pretrained")
    if weights != "random":
        return weights
    initial = os.path.join(config.out, "train", "initial.pt")
    if not os.path.exists(initial):
        torch.manual_seed(int(base.get("seed", 0)))
        init = create_backbone(base.get("backbone", ClusterConfig.backbone), weights="random",
                               image_size=base.get("image_size"))
        save_backbone(init, initial)
    return initial


def _train(train_config: TrainConfig, method: str, alpha: float | None) -> dict[str, Any]:
    """Train (or resume, or find finished) one run; its row of the protocol."""
    t = time.perf_counter()
    trainer = create_method(method, train_config)
    trainer.fit()
    return {"training": method, "alpha": alpha, "weights": os.path.join(train_config.out, "best.pt"),
            "val_CA": trainer.best_score_, "best_epoch": trainer.best_epoch_,
            "train_seconds": round(time.perf_counter() - t, 1)}


def _best_alpha_run(runs: dict[str, dict]) -> str | None:
    """The episodic run whose model clusters the validation classes best."""
    episodic = {r: v for r, v in runs.items() if v["training"] == "episodic"}
    return max(episodic, key=lambda r: episodic[r]["val_CA"]) if episodic else None


def grouped_scores(run_dir: str, algorithms: list[str], seeds: int, pattern: str,
                   params: dict | None = None) -> dict[str, Any]:
    """Cluster each group of classes of a run on its own; per seed, average the scores over groups.

    Returns ``{algorithm: RepeatedScores}`` whose runs are the per-seed group averages.
    """
    import numpy as np

    run = run_folders.load_run(run_dir)
    X = prepare_features(run.embeddings, True)
    labels = np.asarray(run.labels)
    keys = []
    for label in labels:
        match = re.search(pattern, label)
        if match is None:
            raise DeepclustError(f"test class '{label}' does not match test_group_by={pattern!r}")
        keys.append(match.group(1))
    keys = np.asarray(keys)
    groups = [np.flatnonzero(keys == g) for g in sorted(set(keys))]
    out = {}
    for algorithm in algorithms:
        per_seed = []
        for seed in range(seeds):
            group_scores = []
            for idx in groups:
                k = len(set(labels[idx]))
                pred = make_clusterer(algorithm, k, seed, (params or {}).get(algorithm)).fit_predict(X[idx])
                group_scores.append(score_clustering(labels[idx], pred))
            per_seed.append({m: float(np.mean([g[m] for g in group_scores])) for m in group_scores[0]})
        out[algorithm] = RepeatedScores(seeds=list(range(seeds)), runs=per_seed)
    return out


def _cell(score: dict, metric: str) -> str:
    return f"{score['mean'][metric]:.3f} ({score['sd'][metric]:.3f})"


def _write_tables(config: ExperimentConfig, results: dict, best_alpha_run: str | None) -> None:
    metrics = ("CA", "NMI", "AMI", "ARI")
    grouped = f", group by group ('{config.test_group_by}'), scores averaged over groups" if config.test_group_by else ""
    lines = [f"# {config.name}: clustering the {config.test_subset} classes ({config.seeds} seeds{grouped})", "",
             "| Cluster method | Training | Best α | " + " | ".join(f"{m} AVG (SD)" for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    shown = [r for r in results if results[r]["training"] != "episodic"] + ([best_alpha_run] if best_alpha_run else [])
    for algorithm in config.algorithms:
        for run in shown:
            r = results[run]
            alpha = f"{r['alpha']:g}" if r["alpha"] is not None else "-"
            lines.append(f"| {algorithm} | {r['training'].capitalize()} | {alpha} | "
                         + " | ".join(_cell(r["scores"][algorithm], m) for m in metrics) + " |")
    lines += ["", "Every model (the episodic α is chosen by validation CA; `val CA` is that figure):", "",
              "| Cluster method | Run | val CA | " + " | ".join(f"{m} AVG (SD)" for m in metrics) + " |",
              "|---|---|---|" + "---|" * len(metrics)]
    for algorithm in config.algorithms:
        for run, r in results.items():
            val = f"{r['val_CA']:.3f}" if r["val_CA"] is not None else "-"
            lines.append(f"| {algorithm} | {run} | {val} | "
                         + " | ".join(_cell(r["scores"][algorithm], m) for m in metrics) + " |")
    with atomic_write(os.path.join(config.out, "table1.md")) as fh:
        fh.write("\n".join(lines) + "\n")
    header = ["run", "training", "alpha", "val_CA", "algorithm"] + [f"{m}_{s}" for m in metrics for s in ("mean", "sd")]
    rows = [[run, r["training"], "" if r["alpha"] is None else r["alpha"], "" if r["val_CA"] is None else f"{r['val_CA']:.6f}",
             a] + [f"{r['scores'][a][s][m]:.6f}" for m in metrics for s in ("mean", "sd")]
            for a in config.algorithms for run, r in results.items()]
    write_csv(os.path.join(config.out, "results.csv"), header, rows)


def _plot_alpha(config: ExperimentConfig, results: dict) -> None:
    """ARI and AMI of every seeded run against alpha (the paper's Figure 3), one panel per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(config.algorithms), figsize=(5 * len(config.algorithms), 4), squeeze=False)
    for ax, algorithm in zip(axes[0], config.algorithms):
        for metric, colour in (("ARI", "tab:blue"), ("AMI", "tab:green")):
            xs, ys = [], []
            for r in results.values():
                if r["training"] == "episodic":
                    values = [run[metric] for run in r["scores"][algorithm]["runs"]]
                    xs += [r["alpha"]] * len(values)
                    ys += values
            ax.scatter(xs, ys, s=14, color=colour, alpha=0.7, label=f"{metric} episodic")
            for name, marker in (("classic", "o"), ("pretrained", "s")):
                if name in results:
                    values = [run[metric] for run in results[name]["scores"][algorithm]["runs"]]
                    ax.scatter([0.0] * len(values), values, s=60, marker=marker, facecolors="none",
                               edgecolors="tab:red" if metric == "AMI" else "tab:orange", label=f"{metric} {name}")
        ax.set_xlabel("α (weight of the scatter loss)")
        ax.set_ylabel("score")
        ax.set_title(f"{config.name}: {algorithm}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(config.out, "figure3.png"))

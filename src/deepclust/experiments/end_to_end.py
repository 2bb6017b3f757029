"""An end-to-end clustering method's paper protocol as one resumable command.

``deepclust experiment CONFIG`` with ``method: mmdc`` or ``method: imc_swav`` in the
file: for one dataset (a folder of images or a benchmark array with its labels),

1. for every *variant* (a set of settings; one by default, several for an ablation),
   train ``seeds`` seeded runs through ``deepclust train --method <method>`` (each run
   checkpointed in ``<out>/<variant>/seedN``);
2. score every run (ACC, NMI, ARI, also CA and AMI) -- for MMDC before and after the
   refinement stage -- and two ensembles: the lowest-loss run and the majority vote
   (MMDC's section 4.2);
3. cluster the raw pixels with k-means over several seeds (the baseline of the paper's
   Table 1);
4. write ``table.md``, ``results.csv``, ``results.json`` and ``figure.png`` (loss curves;
   for MMDC accuracy against final loss, the paper's Figure 5; for IMC-SwAV accuracy by
   epoch, the paper's Figure 4b).

Every run skips what a previous, interrupted invocation finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust.cluster import create_clusterer
from deepclust.config import END_TO_END, build_config, write_config
from deepclust.errors import DeepclustError
from deepclust.experiments.common import check_sections, read_config
from deepclust.io import atomic_write, save_figure, write_csv, write_json
from deepclust.methods import config_class, create_method
from deepclust.metrics import repeat_clustering

log = logging.getLogger("deepclust")

#: Methods whose experiments this module runs.
#: What the ``loss`` of a run is, per method (the lowest-loss ensemble picks the smallest).
LOSS_MEANING = {"mmdc": "eq. 1 at the end of the main stage",
                "imc_swav": "swapped prediction + eq. 6, mean over the last epoch"}
METRICS = ("ACC", "NMI", "ARI")
SHARED = ("images", "dataset", "labels", "image_size", "channels", "n_clusters", "device", "progress")


@dataclass
class ClusteringExperimentConfig:
    """Configuration of ``deepclust experiment`` for an end-to-end clustering method.

    Attributes
    ----------
    name : str
    method : str
        ``mmdc`` or ``imc_swav``.
    out : str
        Experiment folder (one run folder per variant, ``table.md``, ``results.*``, ``figure.png``).
    images, dataset, labels, image_size, channels
        The data, as in :class:`deepclust.config.MMDCConfig`. Labels are needed for the
        scores: a benchmark ``dataset`` has them, a folder needs ``labels: folders``.
    n_clusters : int
    seeds : int
        Seeded runs per variant (seeds 0 .. seeds-1).
    settings : dict
        Method settings shared by every variant (:class:`~deepclust.config.MMDCConfig` keys).
    variants : dict
        ``{name: {setting: value}}``: one training per entry with these settings on top of
        ``settings``; empty: one variant named after the method.
    baseline_seeds : int
        Seeds of k-means on the raw pixels (0: no baseline).
    device, progress
    """

    name: str = "experiment"
    method: str = "mmdc"
    out: str = ""
    images: str = ""
    dataset: dict = dataclasses.field(default_factory=dict)
    labels: str | None = "folders"
    image_size: int = 32
    channels: int = 3
    n_clusters: int | None = None
    seeds: int = 3
    settings: dict = dataclasses.field(default_factory=dict)
    variants: dict = dataclasses.field(default_factory=dict)
    baseline_seeds: int = 5
    device: str = "cpu"
    progress: bool = True


def load_clustering_experiment(path: str | os.PathLike | None, **overrides: Any) -> ClusteringExperimentConfig:
    """Read and check a clustering experiment config (every variant's settings included)."""

    config = read_config(ClusteringExperimentConfig, path, overrides)
    if config.method not in END_TO_END:
        raise DeepclustError(f"method={config.method!r} is not an end-to-end clustering method: {', '.join(END_TO_END)}")
    if not isinstance(config.variants, dict) or not all(isinstance(v, dict) for v in config.variants.values()):
        raise DeepclustError("variants must map a name to its settings, e.g. {vanilla: {repetitions: 1}}")
    training = type(create_method(config.method, config_class(config.method)()))
    shared = {f.name for f in dataclasses.fields(config_class(config.method))} - {"method", "out", "runs", "seed", "params"}
    known = (set(training.param_names()) | shared) - set(SHARED)
    check_sections([("settings", config.settings)] + [(f"variants.{k}", v) for k, v in config.variants.items()], known)
    for variant in _variants(config):
        method_config(config, variant)  # fail on a bad setting now, not after hours of training
    return config


def _variants(config: ClusteringExperimentConfig) -> dict[str, dict]:
    return dict(config.variants) or {config.method: {}}


def method_config(config: ClusteringExperimentConfig, variant: str):
    """The method config of one variant (its runs live in ``<out>/<variant>``)."""

    values = {**config.settings, **_variants(config)[variant]}
    values.update({k: getattr(config, k) for k in SHARED}, method=config.method, runs=config.seeds, seed=0,
                  out=os.path.join(config.out, variant))
    method_cfg = build_config(config_class(config.method), None, **values)
    create_method(config.method, method_cfg)._check()
    return method_cfg


def run_clustering_experiment(config: ClusteringExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every variant and the baseline; write and return the results."""

    t_start = time.perf_counter()
    os.makedirs(config.out, exist_ok=True)
    write_config(os.path.join(config.out, "experiment.yaml"), config)
    results: dict[str, Any] = {"name": config.name, "config": dataclasses.asdict(config), "variants": {}}
    data = None
    variants = _variants(config)
    for i, variant in enumerate(variants, 1):
        log.info("[%d/%d] %s: %d seeded run(s)", i, len(variants), variant, config.seeds)
        t = time.perf_counter()
        method = create_method(config.method, method_config(config, variant)).fit()
        if method.summary_["scores"] is None:
            raise DeepclustError("the experiment needs true labels: use a dataset, or images with labels: folders")
        data = method.data_
        results["variants"][variant] = {
            "settings": variants[variant], "scores": method.summary_["scores"],
            "runs": method.summary_["runs"], "seconds": round(time.perf_counter() - t, 1),
            "history": {r["seed"]: r["history"] for r in method.runs_},
        }
    if config.baseline_seeds and data is not None:
        results["baseline"] = _pixel_kmeans(data, config.n_clusters, config.baseline_seeds)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(os.path.join(config.out, "results.json"), results)
    _write_tables(config, results)
    _plot(config, results)
    return results


def _pixel_kmeans(data, n_clusters: int, seeds: int) -> dict[str, Any]:
    """k-means (k-means++, 10 initialisations) on the raw pixels scaled to [0, 1]."""

    log.info("k-means on raw pixels, %d seeds", seeds)
    X = data.images.reshape(len(data.images), -1).astype(np.float32) / 255
    scores = repeat_clustering(X, data.labels, lambda s: create_clusterer("kmeans", n_clusters=n_clusters, random_state=s),
                               seeds=range(seeds))
    return {"runs": scores.runs, "mean": scores.mean(), "sd": scores.std()}


def _stats(runs: list[dict]) -> tuple[dict, dict]:
    mean = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
    sd = {m: float(np.std([r[m] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for m in runs[0]}
    return mean, sd


def table_rows(results: dict) -> list[dict]:
    """One row per (variant, stage, selection): the figures of ``table.md`` and ``results.csv``."""
    rows = []
    if "baseline" in results:
        b = results["baseline"]
        rows.append({"variant": "k-means on raw pixels", "stage": "-", "selection": f"mean of {len(b['runs'])} seeds",
                     "mean": b["mean"], "sd": b["sd"]})
    for variant, v in results["variants"].items():
        stages = ["main"] + (["refined"] if "refined" in v["scores"]["ensembles"] else [])
        for stage in stages:
            mean, sd = _stats([r[stage] for r in v["scores"]["runs"]])
            rows.append({"variant": variant, "stage": stage, "selection": f"single runs (mean of {len(v['scores']['runs'])})",
                         "mean": mean, "sd": sd})
            for selection in ("lowest_loss", "majority"):
                rows.append({"variant": variant, "stage": stage, "selection": selection.replace("_", " "),
                             "mean": v["scores"]["ensembles"][stage][selection], "sd": None})
    return rows


def _write_tables(config: ClusteringExperimentConfig, results: dict) -> None:
    rows = table_rows(results)
    refined = any("refined" in v["scores"]["ensembles"] for v in results["variants"].values())
    lines = [f"# {config.name}: {config.method}, {config.seeds} seeded runs per variant", "",
             "| Variant | Stage | Selection | " + " | ".join(f"{m} AVG (SD)" for m in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        cells = [f"{r['mean'][m]:.3f}" + (f" ({r['sd'][m]:.3f})" if r["sd"] is not None else "") for m in METRICS]
        lines.append(f"| {r['variant']} | {r['stage']} | {r['selection']} | " + " | ".join(cells) + " |")
    lines += ["", f"Every run (loss: {LOSS_MEANING[config.method]}; the lowest-loss ensemble picks its smallest):", "",
              "| Variant | Seed | Loss | Epochs | Training s | ACC main |" + (" ACC refined |" if refined else "")
              + " NMI main | ARI main |", "|---|---|---|---|---|---|" + ("---|" if refined else "") + "---|---|"]
    for variant, v in results["variants"].items():
        for run, s in zip(v["runs"], v["scores"]["runs"]):
            cell = (f" {s['refined']['ACC']:.3f} |" if "refined" in s else " - |") if refined else ""
            lines.append(f"| {variant} | {run['seed']} | {run['loss']:.4f} | {run['epochs']} | {run.get('train_seconds', run['seconds']):.0f} | "
                         f"{s['main']['ACC']:.3f} |{cell} {s['main']['NMI']:.3f} | {s['main']['ARI']:.3f} |")
    lines += ["", "Training s: the sum of the run's epoch times (whichever invocations trained them).",
              f"Wall time of this invocation: {results['seconds']:.0f} s (finished runs are loaded, not retrained)."]
    with atomic_write(os.path.join(config.out, "table.md")) as fh:
        fh.write("\n".join(lines) + "\n")
    header = ["variant", "stage", "selection"] + [f"{m}_{s}" for m in ("CA", "ACC", "NMI", "AMI", "ARI") for s in ("mean", "sd")]
    write_csv(os.path.join(config.out, "results.csv"), header,
              [[r["variant"], r["stage"], r["selection"]]
               + [f"{v:.6f}" if v is not None else "" for m in ("CA", "ACC", "NMI", "AMI", "ARI")
                  for v in (r["mean"][m], r["sd"][m] if r["sd"] is not None else None)] for r in rows])


def _plot(config: ClusteringExperimentConfig, results: dict) -> None:
    """Left: the training loss of every run by epoch (MMDC's Figure 6). Right: with
    accuracy recorded during training (IMC-SwAV), ACC by epoch (IMC-SwAV's Figure 4b);
    otherwise each run's accuracy against its final loss (MMDC's Figure 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    curved = any(h.get("ACC") is not None for v in results["variants"].values() for hs in v["history"].values()
                 for h in hs)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (variant, v) in enumerate(results["variants"].items()):
        colour = colours[i % len(colours)]
        for j, (seed, history) in enumerate(v["history"].items()):
            points = [(h["epoch"], h["loss"]) for h in history if h.get("stage", "cluster") in ("cluster", "refine")]
            if points:
                left.plot(*zip(*points), color=colour, alpha=0.8, marker=".", label=variant if j == 0 else None)
            curve = [(h["epoch"], h["ACC"]) for h in history if h.get("ACC") is not None]
            if curve:
                right.plot(*zip(*curve), color=colour, alpha=0.8, marker=".", label=variant if j == 0 else None)
        if not curved:
            right.scatter([r["loss"] for r in v["runs"]], [s["main"]["ACC"] for s in v["scores"]["runs"]], color=colour,
                          label=variant)
    left.set(xlabel="epoch", ylabel=f"training loss ({LOSS_MEANING[config.method].split(',')[0]})",
             title=f"{config.name}: training")
    if curved:
        if "baseline" in results:
            right.axhline(results["baseline"]["mean"]["ACC"], color="grey", linestyle="--", label="k-means on pixels")
        right.set(xlabel="epoch", ylabel="ACC", title="accuracy during training")
    else:
        right.set(xlabel="final loss (eq. 1)", ylabel="ACC (main stage)", title="accuracy against loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(config.out, "figure.png"))

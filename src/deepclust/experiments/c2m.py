"""The C2M paper's protocol as one resumable command: ``deepclust experiment CONFIG`` with
``method: c2m`` in the file.

Two protocols:

- ``synthetic`` (the paper's Table 2): metrics learned from ``train_family`` sets only
  (blobs), each *training* (standard: 20 labelled sets, 10 epochs; few-shot: 5 sets,
  1 epoch) and *variant* (a set of :class:`~deepclust.cluster.c2m.C2M` settings) in
  turn, then used to cluster ``test_datasets`` new sets of every family without being told
  k. Beside it, k-means *given* the true k.
- ``transfer``: the labelled sets are drawn from one image collection (``train``: a
  benchmark array or a folder of class subfolders, see
  :func:`~deepclust.methods.c2m_training.labelled_features`), the test sets from another
  (``test``), again against k-means with the true k.

For the first seed of every variant's first training it also runs the paper's critic
checks on ``check_datasets`` test sets per family: the score as more points are
mislabelled (its Figure 2), the largest change of score when the clusters are renamed
(should be 0), and how often the truth scores best among the classic candidates,
k-means / Ward / single linkage for every k (its Table 4).

Writes ``table.md``, ``results.csv``, ``results.json`` and ``figure.png`` (Figure 2);
every metric is saved in ``metrics/`` and every finished (variant, training, seed) in
``parts/``, so an interrupted invocation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust.checkpoint import load_checkpoint
from deepclust.cluster import create_clusterer
from deepclust.cluster.c2m import (
    C2M,
    SEARCH_SETTINGS,
    classic_candidates,
    mislabel_scores,
    standardize,
    truth_rank,
)
from deepclust.config import write_config
from deepclust.data.synthetic import (
    KINDS,
    nearest_centre_accuracy,
    synthetic_collection,
)
from deepclust.errors import DeepclustError
from deepclust.experiments.common import check_sections, read_config
from deepclust.io import atomic_write, save_figure, write_csv, write_json
from deepclust.methods.c2m_training import labelled_features, sample_datasets
from deepclust.metrics import score_clustering
from deepclust.validation import check_int

log = logging.getLogger("deepclust")

PROTOCOLS = ("synthetic", "transfer")
#: Shares of mislabelled points in the Figure 2 check: up to a half (with two clusters, moving
#: every point is only renaming them, so the curve would come back up).
FRACTIONS = tuple(float(f) for f in np.round(np.linspace(0, 0.5, 11), 2))


@dataclass
class C2MExperimentConfig:
    """Configuration of ``deepclust experiment`` for C2M.

    Attributes
    ----------
    name, method : str
        ``method: c2m``.
    out : str
        Experiment folder.
    protocol : str
        ``synthetic`` or ``transfer``.
    train_family, families, n_samples
        Synthetic: the family the metrics learn from, the families they are tested on, and
        the points per set (:mod:`deepclust.data.synthetic`).
    separation : float
        Synthetic: the least distance between two blob centres, in cluster standard
        deviations, in the training and the test sets (0: anywhere, scikit-learn's way).
    train, test : dict
        Transfer: the labelled collections (``{dataset: {name, source}}`` or ``{images,
        split, subset, backbone, ...}``, the arguments of ``labelled_features``).
    train_size, test_size : int
        Transfer: points per training set and per test set (the paper: 200 and 1000).
    trainings : dict
        ``{name: {datasets: N, epochs: E}}``.
    test_datasets : int
        Test sets per family (the paper: 50).
    max_clusters : int
        Most clusters a training or test set has, and the most the search may use.
    settings, variants : dict
        C2M arguments shared by every variant, and ``{variant: {argument: value}}``.
    seeds : int
        Seeded trainings per (variant, training).
    check_datasets : int
        Test sets per family of the critic checks (0: none).
    progress : bool
    """

    name: str = "c2m"
    method: str = "c2m"
    out: str = ""
    protocol: str = "synthetic"
    train_family: str = "blobs"
    families: list = dataclasses.field(default_factory=lambda: ["blobs", "aniso", "moons", "circles"])
    n_samples: int = 200
    separation: float = 0.0
    train: dict = dataclasses.field(default_factory=dict)
    test: dict = dataclasses.field(default_factory=dict)
    train_size: int = 200
    test_size: int = 1000
    trainings: dict = dataclasses.field(default_factory=lambda: {"standard": {"datasets": 20, "epochs": 10},
                                                                 "few-shot": {"datasets": 5, "epochs": 1}})
    test_datasets: int = 50
    max_clusters: int = 9
    settings: dict = dataclasses.field(default_factory=dict)
    variants: dict = dataclasses.field(default_factory=dict)
    seeds: int = 1
    check_datasets: int = 10
    progress: bool = True


def load_c2m_experiment(path: str | os.PathLike | None, **overrides: Any) -> C2MExperimentConfig:
    """Read and check a C2M experiment config (every variant's settings included)."""
    import inspect

    config = read_config(C2MExperimentConfig, path, overrides, paths=("out",))
    if config.method != "c2m":
        raise DeepclustError(f"method={config.method!r}: this runner is for method: c2m")
    if config.protocol not in PROTOCOLS:
        raise DeepclustError(f"protocol={config.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if config.protocol == "synthetic":
        for family in [config.train_family] + list(config.families):
            if family not in KINDS:
                raise DeepclustError(f"unknown synthetic family {family!r}; known: {', '.join(KINDS)}")
    elif not config.train or not config.test:
        raise DeepclustError("protocol: transfer needs train: and test: collections, e.g. "
                             "{dataset: {name: coil20, source: PATH}}")
    if not isinstance(config.trainings, dict) or not config.trainings or not all(
            isinstance(t, dict) and set(t) == {"datasets", "epochs"} for t in config.trainings.values()):
        raise DeepclustError("trainings must map a name to {datasets: N, epochs: E}")
    if not isinstance(config.variants, dict) or not all(isinstance(v, dict) for v in config.variants.values()):
        raise DeepclustError("variants must map a name to C2M settings, e.g. {paper: {}}")
    known = set(inspect.signature(C2M.__init__).parameters) - {"self", "max_clusters", "epochs", "random_state",
                                                               "verbose"}
    check_sections([("settings", config.settings)] + [(f"variants.{k}", v) for k, v in config.variants.items()], known,
                   "C2M setting(s)")
    for name, value, low in (("test_datasets", config.test_datasets, 1), ("seeds", config.seeds, 1),
                             ("max_clusters", config.max_clusters, 2), ("check_datasets", config.check_datasets, 0)):
        check_int(name, value, low)
    return config


def _variants(config: C2MExperimentConfig) -> dict[str, dict]:
    return dict(config.variants) or {"c2m": {}}


def _collections(config: C2MExperimentConfig):
    """(training pool, {family: test sets}): the pool is a function seed, count -> labelled
    sets; the test sets are fixed (seeded) whatever the metric."""

    n = config.test_datasets
    if config.protocol == "synthetic":
        def pool(seed, count):
            return synthetic_collection(config.train_family, count, config.n_samples, config.max_clusters,
                                        random_state=10_000 + seed, min_separation=config.separation)

        return pool, {f: _synthetic_tests(config, f) for f in config.families}

    def features(spec, part):
        spec = dict(spec)
        spec.setdefault("cache", os.path.join(config.out, "cache", part))
        spec.setdefault("progress", config.progress)
        return labelled_features(**spec)

    source, target = features(config.train, "train"), features(config.test, "test")

    def pool(seed, count):
        subsets = sample_datasets(source.y, count, config.train_size, config.max_clusters, random_state=seed)
        return [(source.X[i], source.y[i]) for i in subsets]

    subsets = sample_datasets(target.y, n, config.test_size, config.max_clusters, random_state=12345)
    return pool, {"test": [(target.X[i], target.y[i]) for i in subsets]}


def _synthetic_tests(config: C2MExperimentConfig, family: str, return_centers: bool = False) -> list[tuple]:
    """The fixed (seeded by the family's place in the config) test sets of one family."""

    return synthetic_collection(family, config.test_datasets, config.n_samples, config.max_clusters,
                                random_state=20_000 + config.families.index(family),
                                min_separation=config.separation, return_centers=return_centers)


def _best_possible(config: C2MExperimentConfig) -> dict:
    """Synthetic blob-type test sets: mean ACC of labelling every point by its most likely
    true centre (what no clustering beats on average)."""

    if config.protocol != "synthetic":
        return {}
    return {f: float(np.mean([nearest_centre_accuracy(X, y, c, f) for X, y, c in _synthetic_tests(config, f, True)]))
            for f in config.families if f in ("blobs", "aniso")}


def _kmeans_true_k(tests: dict) -> dict:
    out = {}
    for family, sets in tests.items():
        scores = [score_clustering(y, create_clusterer("kmeans", n_clusters=len(np.unique(y)), random_state=0)
                                   .fit_predict(np.asarray(X, dtype=np.float64)), ("ACC", "NMI")) for X, y in sets]
        out[family] = {m: float(np.mean([s[m] for s in scores])) for m in ("ACC", "NMI")}
    return out


def _evaluate(model, tests: dict, progress: bool) -> dict:
    """Cluster every test set with the metric (k unknown): mean ACC, NMI, share of sets with
    the right k, and how often the truth scores at least as high as what was found."""
    from tqdm.auto import tqdm

    out = {}
    for family, sets in tests.items():
        rows = []
        for X, y in tqdm(sets, desc=f"clustering {family}", disable=not progress, leave=False):
            found = model.fit_predict(X)
            truth, found_score = model.score_many(X, [y, found])
            s = score_clustering(y, found, ("ACC", "NMI"))
            rows.append({**s, "k_true": int(len(np.unique(y))), "k_found": int(model.n_clusters_),
                         "truth_wins": bool(truth >= found_score)})
        out[family] = {"ACC": float(np.mean([r["ACC"] for r in rows])), "NMI": float(np.mean([r["NMI"] for r in rows])),
                       "ACC_sd": float(np.std([r["ACC"] for r in rows])),
                       "k_right": float(np.mean([r["k_true"] == r["k_found"] for r in rows])),
                       "truth_wins": float(np.mean([r["truth_wins"] for r in rows])), "sets": rows}
        log.info("  %s: ACC %.3f NMI %.3f, true k found in %.0f%% of %d sets", family, out[family]["ACC"],
                 out[family]["NMI"], 100 * out[family]["k_right"], len(rows))
    return out


def _checks(model, tests: dict, count: int, seed: int) -> dict:
    """The paper's critic checks on the first ``count`` sets of every family."""
    from scipy.stats import spearmanr

    out = {}
    rng = np.random.default_rng(seed)
    for family, sets in tests.items():
        curves, renamed, ranks = [], [], []
        for X, y in sets[:count]:
            y = np.unique(y, return_inverse=True)[1].reshape(-1)  # class names -> 0..k-1
            curves.append(mislabel_scores(model, X, y, FRACTIONS, copies=5, random_state=int(rng.integers(2**31)))
                          .mean(1))
            perm = rng.permutation(int(np.max(y)) + 1)
            truth, renamed_score = model.score_many(X, [y, perm[y]])
            renamed.append(abs(renamed_score - truth))
            candidates = classic_candidates(standardize(X, model.input_dim), model.max_clusters, random_state=0)
            ranks.append(truth_rank(model, X, y, [c.numpy() for c in candidates]))
        curves = np.array(curves)
        out[family] = {"fractions": list(map(float, FRACTIONS)), "mean_score": curves.mean(0).tolist(),
                       "spearman": float(np.mean([spearmanr(FRACTIONS, c)[0] for c in curves])),
                       "truth_above_half": float(np.mean(curves[:, 0] > curves[:, 5])),
                       "rename_change": float(np.max(renamed)), "truth_best": float(np.mean(np.array(ranks) == 1)),
                       "ranks": [int(r) for r in ranks]}
    return out


def _recorded_training(metric_path: str) -> float:
    """Seconds the epochs of a saved metric took when it was trained (its history)."""

    state = load_checkpoint(metric_path, "C2M metric", "delete it to train it again")
    return round(sum(h.get("seconds", 0.0) for h in state.get("history", [])), 1)


def _plain(value: Any) -> Any:
    """A setting as YAML gives it (tuples as lists), to compare saved and asked settings."""
    return json.loads(json.dumps(value))


def run_c2m_experiment(config: C2MExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every (variant, training, seed); write and return the results."""

    t_start = time.perf_counter()
    os.makedirs(os.path.join(config.out, "metrics"), exist_ok=True)
    os.makedirs(os.path.join(config.out, "parts"), exist_ok=True)
    write_config(os.path.join(config.out, "experiment.yaml"), config)
    pool, tests = _collections(config)
    baseline_path = os.path.join(config.out, "parts", "kmeans-true-k.json")
    if not os.path.isfile(baseline_path):
        write_json(baseline_path, _kmeans_true_k(tests))
    with open(baseline_path, encoding="utf-8") as fh:
        results: dict[str, Any] = {"name": config.name, "config": dataclasses.asdict(config),
                                   "kmeans_true_k": json.load(fh), "best_possible": _best_possible(config),
                                   "parts": {}}
    units = [(v, t, s) for v in _variants(config) for t in config.trainings for s in range(config.seeds)]
    for i, (variant, training, seed) in enumerate(units, 1):
        key = f"{variant}-{training}-s{seed}"
        part_path = os.path.join(config.out, "parts", f"{key}.json")
        checked = config.check_datasets and seed == 0 and training == next(iter(config.trainings))
        metric_path = os.path.join(config.out, "metrics", f"{key}.pt")
        settings = {**config.settings, **_variants(config)[variant]}
        if os.path.isfile(part_path):
            with open(part_path, encoding="utf-8") as fh:
                part = json.load(fh)
            if part.get("settings") != settings:
                raise DeepclustError(
                    f"{part_path} was made with other settings ({part.get('settings')}, now {settings}); "
                    f"set another out: folder, or remove {key}.json from parts/ to redo it (a saved metric is reused "
                    f"when only search settings changed; remove {key}.pt from metrics/ to train it again)")
            stale = checked and ("checks" not in part or next(iter(part["checks"].values()))["fractions"] != list(FRACTIONS))
            if stale:  # checks of an older kind: redo them with the saved metric
                log.info("[%d/%d] %s: critic checks", i, len(units), key)
                part["checks"] = _checks(C2M.load(metric_path), tests, config.check_datasets, seed)
                write_json(part_path, part)
            if not part.get("train_seconds") and os.path.isfile(metric_path):  # made from a loaded metric
                part["train_seconds"] = _recorded_training(metric_path)
            results["parts"][key] = part
            continue
        log.info("[%d/%d] %s", i, len(units), key)
        spec = config.trainings[training]
        if os.path.isfile(metric_path):  # trained before: its search settings may change, nothing else
            model = C2M.load(metric_path, **{k: v for k, v in settings.items() if k in SEARCH_SETTINGS})
            differ = sorted(k for k, v in settings.items() if _plain(getattr(model, k)) != _plain(v))
            if differ:
                raise DeepclustError(f"{metric_path} was trained with other {', '.join(differ)}; remove it to "
                                     "train again, or set another out: folder")
            train_seconds = _recorded_training(metric_path)  # the time its epochs took then
        else:
            t = time.perf_counter()
            model = C2M(max_clusters=config.max_clusters, epochs=spec["epochs"], random_state=seed, verbose=True,
                        **settings).fit(pool(seed, spec["datasets"]))
            model.save(metric_path)
            train_seconds = time.perf_counter() - t
        t = time.perf_counter()
        part = {"variant": variant, "training": training, "seed": seed, "settings": settings,
                "train_seconds": round(train_seconds, 1), "test": _evaluate(model.seed_search(seed), tests,
                                                                            config.progress)}
        part["test_seconds"] = round(time.perf_counter() - t, 1)
        write_json(part_path, part)
        if checked:
            part["checks"] = _checks(model, tests, config.check_datasets, seed)
            write_json(part_path, part)
        results["parts"][key] = part
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(os.path.join(config.out, "results.json"), results)
    _write_tables(config, results)
    _plot(config, results)
    return results


def table_rows(results: dict) -> list[dict]:
    """One row per (variant, training) and family: mean over seeds of the per-seed means."""
    rows: dict[tuple, dict] = {}
    for part in results["parts"].values():
        for family, r in part["test"].items():
            row = rows.setdefault((part["variant"], part["training"], family), {
                "variant": part["variant"], "training": part["training"], "family": family, "seeds": []})
            row["seeds"].append(r)
    out = []
    for row in rows.values():
        s = row.pop("seeds")
        row.update({m: float(np.mean([r[m] for r in s])) for m in ("ACC", "NMI", "k_right", "truth_wins")})
        row["ACC_sd_seeds"] = float(np.std([r["ACC"] for r in s])) if len(s) > 1 else None
        row["n_seeds"] = len(s)
        out.append(row)
    return out


def _write_tables(config: C2MExperimentConfig, results: dict) -> None:
    rows = table_rows(results)
    families = list(results["kmeans_true_k"])
    by = {(r["variant"], r["training"], r["family"]): r for r in rows}
    lines = [f"# {config.name}: C2M, {config.protocol} protocol", "",
             f"ACC / NMI averaged over {config.test_datasets} test sets per family, the number of clusters unknown "
             f"(at most {config.max_clusters}); mean over {config.seeds} seeded training(s)."
             + (f" Blob centres at least {config.separation:g} cluster stds apart." if config.separation else ""), "",
             "| Variant | Training | " + " | ".join(families) + " |", "|---|---|" + "---|" * len(families)]

    def grid(cell) -> list[str]:  # one row per (variant, training), one cell per family
        return [f"| {v} | {t} | " + " | ".join(cell(by[(v, t, f)]) if (v, t, f) in by else "-" for f in families)
                + " |" for v in _variants(config) for t in config.trainings]

    lines += grid(lambda r: f"{r['ACC']:.3f} / {r['NMI']:.3f}")
    km = results["kmeans_true_k"]
    lines.append("| k-means, true k given | - | " + " | ".join(f"{km[f]['ACC']:.3f} / {km[f]['NMI']:.3f}"
                                                          for f in families) + " |")
    best = results.get("best_possible") or {}
    if best:
        lines.append("| labels of the nearest true centre (best possible ACC) | - | "
                     + " | ".join(f"{best[f]:.3f}" if f in best else "-" for f in families) + " |")
    lines += ["", "Share of test sets where the search found the true k / where the metric scores the truth at "
              "least as high as what the search found:", "",
              "| Variant | Training | " + " | ".join(families) + " |", "|---|---|" + "---|" * len(families)]
    lines += grid(lambda r: f"{r['k_right']:.2f} / {r['truth_wins']:.2f}")
    checked = [(k, p) for k, p in results["parts"].items() if "checks" in p]
    if checked:
        lines += ["", f"Critic checks ({config.check_datasets} test sets per family; first training, seed 0): rank "
                  "correlation of the score with the share of mislabelled points, 0 to 50% (Figure 2; -1: it falls at "
                  "every step), mean over sets / largest "
                  "score change when clusters are renamed / share of sets where the truth scores best, and among the "
                  "3 best, of itself and k-means, Ward and single linkage for every k (Table 4's Best and Top 3):", "",
                  "| Metric | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for key, part in checked:
            c = part["checks"]
            lines.append(f"| {key} | " + " | ".join(
                f"{c[f]['spearman']:.2f} / {c[f]['rename_change']:.1e} / {c[f]['truth_best']:.2f} / "
                f"{np.mean(np.array(c[f]['ranks']) <= 3):.2f}" for f in families)
                + " |")
    lines += ["", "| Metric | Training s | Test s |", "|---|---|---|"]
    lines += [f"| {k} | {p['train_seconds']:.0f} | {p['test_seconds']:.0f} |" for k, p in results["parts"].items()]
    lines += ["", f"Wall time of this invocation: {results['seconds']:.0f} s (finished parts are loaded, not redone)."]
    with atomic_write(os.path.join(config.out, "table.md")) as fh:
        fh.write("\n".join(lines) + "\n")
    write_csv(os.path.join(config.out, "results.csv"),
              ["variant", "training", "family", "ACC", "NMI", "k_right", "truth_wins", "seeds"],
              [[r["variant"], r["training"], r["family"], f"{r['ACC']:.6f}", f"{r['NMI']:.6f}", f"{r['k_right']:.4f}",
                f"{r['truth_wins']:.4f}", r["n_seeds"]] for r in rows]
              + [["k-means (true k)", "-", f, f"{v['ACC']:.6f}", f"{v['NMI']:.6f}", "", "", ""] for f, v in km.items()])


def _plot(config: C2MExperimentConfig, results: dict) -> None:
    """The paper's Figure 2: the metric's mean score against the share of mislabelled points."""
    checked = [(k, p["checks"]) for k, p in results["parts"].items() if "checks" in p]
    if not checked:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(checked), figsize=(5 * len(checked), 3.8), squeeze=False)
    for ax, (key, checks) in zip(axes[0], checked):
        for family, c in checks.items():
            ax.plot(c["fractions"], c["mean_score"], marker="o", ms=3, label=family)
        ax.set(title=key, xlabel="share of points mislabelled", ylabel="metric score (mean)")
        ax.legend(fontsize=8)
    save_figure(fig, os.path.join(config.out, "figure.png"))

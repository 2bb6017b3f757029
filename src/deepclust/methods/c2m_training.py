"""``deepclust train --method c2m``: learn a C2M clustering metric from labelled images.

The labelled images become many small labelled datasets, as in the paper: each draws a
random number of classes (2 to ``max_classes``) and ``task_size`` points of them. Images
of a folder (class subfolders) are represented by the backbone's embeddings (cached in the
output folder, unreadable files skipped and listed); a benchmark array (``dataset: {name:
mnist|coil20, source: PATH}``) by its pixels. The metric is written to ``OUT/metric.pt``
and clusters new data, of any dimension and number of clusters, with
``deepclust cluster IMAGES --algorithm c2m --param metric=OUT/metric.pt`` or selects k
with ``--n-clusters auto --k-method c2m --k-metric OUT/metric.pt``.
"""

from __future__ import annotations

import logging
import numbers
import os
import time

import numpy as np

from deepclust import runs
from deepclust.cluster.c2m import C2M, PRESETS
from deepclust.cluster.space import prepare_features
from deepclust.config import C2MConfig, write_config
from deepclust.data import find_images, split_classes
from deepclust.data.datasets import load_pixels
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.backbones import DEFAULT_BACKBONE, create_backbone
from deepclust.features.extract import embed_records
from deepclust.io import write_csv, write_json
from deepclust.validation import check_int

log = logging.getLogger("deepclust")

METRIC, HISTORY, SUMMARY = "metric.pt", "history.csv", "train_summary.json"


class LabelledFeatures:
    """Feature vectors with their true classes.

    Attributes
    ----------
    X : float32 ndarray of shape (n, d)
    y : ndarray of str, shape (n,)
    paths : list of str
    skipped : list of (path, reason)
    """

    def __init__(self, X, y, paths, skipped):
        self.X, self.y, self.paths, self.skipped = X, np.asarray(y), list(paths), list(skipped)


def labelled_features(images: str = "", dataset: dict | None = None, split: str | None = None,
                      subset: str | None = None, backbone: str | None = None, weights: str = "pretrained",
                      image_size: int | None = None, batch_size: int = 32, device: str = "cpu",
                      num_workers: int | None = None, cache: str | None = None,
                      progress: bool = True) -> LabelledFeatures:
    """The labelled vectors a C2M metric learns from or is tested on.

    ``images``: a folder of class subfolders (optionally the classes of one ``subset`` of a
    ``split``), embedded by ``backbone`` (L2-normalised; cached in ``cache``);
    ``dataset``: ``{name: mnist|coil20, source: PATH}``, the benchmark's pixels scaled to [0, 1].
    """

    if dataset:
        data = load_pixels(dataset=dataset)
        X = data.images.reshape(len(data.images), -1).astype(np.float32) / 255.0
        return LabelledFeatures(X, data.labels, data.paths, [])
    if not images:
        raise DeepclustError("no labelled images given: pass a folder of class subfolders (--images DIR) "
                             "or a dataset {name: mnist|coil20, source: PATH}")

    classes = split_classes(split, subset, example="train")
    records = find_images(os.path.expanduser(images), classes=classes)
    model = create_backbone(backbone or DEFAULT_BACKBONE, weights=weights, image_size=image_size)
    log.info("embedding %d images of '%s' with %s (%d px)", len(records), images, model.name, model.image_size)
    emb = embed_records(records, model, cache or None, batch_size=batch_size, device=resolve_device(device),
                        num_workers=num_workers, progress=progress)
    kept = emb.kept(records)
    if not kept:
        raise DeepclustError(f"none of the {len(records)} images in '{images}' could be read")
    return LabelledFeatures(prepare_features(emb.vectors, True).astype(np.float32), [r.folder for r in kept],
                            [r.path for r in kept], emb.skipped_paths(records))


def sample_datasets(y, count: int, size: int, max_classes: int, min_classes: int = 2,
                    random_state=None) -> list[np.ndarray]:
    """``count`` labelled subsets of one collection, as the paper builds its training sets:
    each draws a number of classes uniformly from ``min_classes`` to ``max_classes`` (at most
    the classes there are), those classes, then ``size`` of their points without
    replacement (all of them when they have fewer). Returns index arrays."""
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) < min_classes:
        raise DeepclustError(f"need at least {min_classes} classes to sample labelled datasets from; got {len(classes)}")
    if count < 1 or size < 2 or min_classes < 2 or max_classes < min_classes:
        raise DeepclustError(f"need count >= 1, size >= 2 and 2 <= min_classes <= max_classes; got {count}, {size}, "
                             f"{min_classes}, {max_classes}")
    rng = np.random.default_rng(random_state)
    top = min(max_classes, len(classes))
    out = []
    for _ in range(count):
        k = int(rng.integers(min_classes, top + 1))
        chosen = rng.choice(classes, k, replace=False)
        pool = np.flatnonzero(np.isin(y, chosen))
        out.append(np.sort(rng.choice(pool, min(size, len(pool)), replace=False)))
    return out


def small_classes_hint(y, metric) -> str | None:
    """A warning when the labelled classes are small for the metric's neighbourhood: the
    structure features mark clusters of at most ``n_neighbours`` points as small, so where
    classes hold fewer than about twice that many images, the metric learns to prefer
    fewer, larger clusters (docs/methods.md gives the EU-moths and Omniglot figures).
    None when the neighbourhood suits the classes."""
    if not metric.structure_features or isinstance(metric.n_neighbours, bool) or not isinstance(metric.n_neighbours, numbers.Integral):
        return None  # a bad n_neighbours is C2M.fit's to report
    median = float(np.median(np.unique(np.asarray(y), return_counts=True)[1]))
    if median >= 2 * metric.n_neighbours:
        return None
    suggested = max(3, int(median) // 2)
    if suggested >= metric.n_neighbours:
        return None
    return (f"the labelled classes hold a median of {median:g} images, close to the metric's neighbourhood of "
            f"{metric.n_neighbours} points (clusters that small count as small), so it will prefer fewer, larger "
            f"clusters; for classes this small train with --param n_neighbours={suggested}")


def c2m_estimator(config: C2MConfig):
    """The :class:`~deepclust.cluster.c2m.C2M` a config describes: the named ``preset``
    with ``params`` (further constructor arguments, checked by name) on top."""
    import inspect

    if config.preset not in PRESETS:
        raise DeepclustError(f"preset={config.preset!r} is not one of {', '.join(PRESETS)}")
    known = set(inspect.signature(C2M.__init__).parameters) - {"self"}
    params = {**PRESETS[config.preset], **dict(config.params or {})}
    unknown = sorted(set(params) - known)
    if unknown:
        raise DeepclustError(f"C2M has no parameter {', '.join(unknown)}; its parameters are: "
                             f"{', '.join(sorted(known - {'random_state', 'verbose'}))}")
    params.setdefault("max_clusters", config.max_clusters)
    params.setdefault("epochs", config.epochs)
    params.setdefault("random_state", config.seed)
    params.setdefault("verbose", True)
    estimator = C2M(**params)
    estimator.check_params()
    return estimator


class C2MTraining:
    """``deepclust train --method c2m``: labelled images -> labelled datasets -> a learned
    metric in ``OUT/metric.pt`` (with ``history.csv``, ``train_summary.json``,
    ``config.yaml`` and ``skipped.csv``). Running again with a finished ``metric.pt``
    reuses it instead of training again."""

    name = "c2m"

    def __init__(self, config: C2MConfig):
        self.config = config

    def fit(self) -> "C2MTraining":
        c = self.config
        if not c.out:
            raise DeepclustError("no output folder given; pass --out DIR")
        for name, value, low in (("n_tasks", c.n_tasks, 1), ("task_size", c.task_size, 2),
                                 ("max_clusters", c.max_clusters, 2), ("epochs", c.epochs, 1)):
            check_int(name, value, low)
        estimator = c2m_estimator(c)  # fail on a bad parameter before embedding
        os.makedirs(c.out, exist_ok=True)
        path = os.path.join(c.out, METRIC)
        if os.path.isfile(path):
            log.info("a metric is already in %s; reusing it (delete it to train again)", path)
            self.metric_ = C2M.load(path)
            return self
        t0 = time.perf_counter()
        data = labelled_features(c.images, c.dataset, c.split, c.subset, c.backbone, c.weights, c.image_size,
                                 c.batch_size, c.device, c.num_workers, os.path.join(c.out, "cache"), c.progress)
        runs.write_skipped(c.out, data.skipped)
        if data.skipped:
            log.warning("skipped %d unreadable image(s); see %s", len(data.skipped), runs.run_path(c.out, runs.SKIPPED))
        subsets = sample_datasets(data.y, c.n_tasks, c.task_size, c.max_clusters, random_state=c.seed)
        hint = small_classes_hint(data.y, estimator)
        if hint:
            log.warning(hint)
        log.info("learning a C2M metric from %d labelled datasets of up to %d points (%d images, %d classes, %d "
                 "features)", len(subsets), c.task_size, len(data.y), len(np.unique(data.y)), data.X.shape[1])
        self.metric_ = estimator.fit([(data.X[i], data.y[i]) for i in subsets])
        self.metric_.save(path)
        history = self.metric_.history_
        write_csv(os.path.join(c.out, HISTORY), list(history[0]), [list(row.values()) for row in history])
        write_config(os.path.join(c.out, "config.yaml"), c)
        write_json(os.path.join(c.out, SUMMARY), {
            "metric": path, "images": len(data.y), "classes": int(len(np.unique(data.y))),
            "features": int(data.X.shape[1]), "datasets": len(subsets), "skipped": len(data.skipped),
            "seconds": time.perf_counter() - t0})
        return self

    def outcome(self) -> list[str]:
        """What ``deepclust train`` prints when the metric is learned."""
        out = self.config.out
        return [f"metric in {out}/metric.pt (use: deepclust cluster IMAGES --algorithm c2m --param metric={out}/metric.pt)"]

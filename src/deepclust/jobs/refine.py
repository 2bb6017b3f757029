"""``deepclust refine RUN_DIR --out NEW_RUN``: the user's feedback moves the features, then
the clustering honours it.

1. The feedback (``RUN_DIR/feedback.json`` from ``deepclust review``, or ``--feedback FILE``)
   is checked against the run's images and resolved into groups of one class and pairs of
   different classes (:mod:`deepclust.feedback`).
2. A linear scatter head (:class:`~deepclust.methods.ScatterHead`, eq. 1 of the core paper in
   closed form) is fitted on the groups of at least two images, its PCA on every image of
   the run, in its ``whitened`` form: the within-class scatter the groups show is shrunk to
   the identity in every direction, and the directions no group spans are kept for the
   classes nobody labelled. On EU moths a projection learned from labels moves the features
   far more than constraints alone.
3. The projected images are clustered with the constraints honoured: a spectral embedding of
   their k-NN graph (``--algorithm spectral``, the default) or the images themselves
   (``kmeans``), then constrained k-means
   (:class:`~deepclust.cluster.constrained.ConstrainedKMeans`): each group in a cluster of
   its own, no cannot-link pair together; the clusters nobody touched are formed afresh, and
   k grows when the groups need more.
With ``--finetune``, the backbone learns first: the feedback's classes of at least two images
become a class split (symbolic links in ``NEW_RUN/finetune/images``, a fifth of the classes
held back to select the epoch), the core method's episodic trainer (the same as ``deepclust
train``, scatter loss weighted by ``FINETUNE["alpha"]``, the last stage trained on cached
views) fine-tunes the run's backbone on them, and every image is embedded again before the
head is fitted and the images are clustered.

4. The new run folder is an ordinary run (report, review, export, predict and evaluate work
   on it): its backbone checkpoint ``head.pt`` carries the head, and ``summary.json`` records
   the parent run, the root run whose embeddings were projected, and the feedback used
   (``feedback-used.json``). Refining a refined run goes back to the root's embeddings with
   both rounds' feedback, so the loop can go round again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from deepclust import runs
from deepclust.cluster.constrained import ConstrainedKMeans
from deepclust.cluster.space import (
    centre_margins,
    distances_to_centres,
    prepare_features,
)
from deepclust.cluster.spectral import spectral_embedding
from deepclust.config import ClusterConfig, TrainConfig, build_config
from deepclust.data.folders import ImageRecord
from deepclust.errors import DeepclustError
from deepclust.features.cache import embedding_cache
from deepclust.features.backbones import LinearHead, create_backbone, save_backbone
from deepclust.features.extract import embed_records
from deepclust.feedback import FILE as FEEDBACK_FILE
from deepclust.feedback import Feedback, Resolved, load_feedback, resolve
from deepclust.io import check_writable, lock_folder
from deepclust.methods import create_method
from deepclust.methods.scatter_head import ScatterHead
from deepclust.metrics import contingency, score_clustering
from deepclust.validation import check_choice

log = logging.getLogger("deepclust")

FEEDBACK_USED = "feedback-used.json"
HEAD = "head.pt"
#: Principal directions the whitened head keeps; fewer lose species nobody labelled, more add
#: directions the few labelled images cannot whiten (measured in docs/review.md).
PCA_COMPONENTS = 256


@dataclass
class Refinement:
    """What :func:`refine_run` did (also in the new run's ``summary.json``, key ``refine``)."""

    out: str
    clusters: np.ndarray
    info: dict[str, Any]


def refine_run(run_dir: str | os.PathLike, out: str | os.PathLike, feedback: str | os.PathLike | None = None,
               n_clusters: int | None = None, seed: int = 0, algorithm: str = "spectral", finetune: bool = False,
               progress: bool = True) -> Refinement:
    """Refine the run in ``run_dir`` with its feedback; write the new run to ``out``."""
    run_dir, out = os.fspath(run_dir), os.fspath(out)
    check_choice("algorithm", algorithm, ("spectral", "kmeans"))
    if os.path.abspath(out) == os.path.abspath(run_dir):
        raise DeepclustError("--out must be a new folder: refine never changes the run it starts from")
    parent = runs.load_run(run_dir)
    lineage = parent.summary.get("refine") or {}
    root = runs.load_run(lineage["root"]) if lineage else parent
    if root.paths != parent.paths:
        raise DeepclustError(f"'{run_dir}' no longer matches its root run '{root.folder}' (other images); refine the "
                             "root run instead")
    feedback_path = os.fspath(feedback) if feedback else runs.run_path(run_dir, FEEDBACK_FILE)
    given = load_feedback(feedback_path)
    used = load_feedback(runs.run_path(run_dir, FEEDBACK_USED)).merged(given) if lineage else given
    constraints = resolve(used, parent.paths)
    check_writable(out)
    with lock_folder(out):
        runs.retire_outputs(out)
        tuned = _finetune(root, constraints, out, seed, progress) if finetune else None
        return _refine(parent, root, used, constraints, out, feedback_path, n_clusters, seed, algorithm, tuned)


def _refine(parent: runs.Run, root: runs.Run, used: Feedback, constraints: Resolved, out: str, feedback_path: str,
            n_clusters: int | None, seed: int, algorithm: str, tuned: tuple | None = None) -> Refinement:
    t0 = time.perf_counter()
    X = prepare_features(root.embeddings if tuned is None else tuned[0], True)
    head = fit_head(X, constraints)
    projected = head.transform(X)
    Z = prepare_features(projected, True)
    k = n_clusters or int(len(np.unique(parent.clusters[parent.clusters >= 0]))) + _splits(parent, constraints)
    space = spectral_embedding(Z, k, random_state=seed) if algorithm == "spectral" else Z
    model = ConstrainedKMeans(k, random_state=seed)
    clusters = model.fit_predict(space, constraints.group, constraints.cannot)
    seconds = time.perf_counter() - t0
    info = _describe(parent, root, constraints, clusters, head, feedback_path, seconds)
    info["algorithm"] = algorithm
    if tuned is not None:
        info["finetuned"] = {"weights": tuned[1], "seconds": round(tuned[2], 1)}
    os.makedirs(out, exist_ok=True)
    used.save(runs.run_path(out, FEEDBACK_USED))
    config = _config(root, out, model.n_clusters_, seed, algorithm)
    saved = _save_head(root, head, out, tuned[1] if tuned is not None else None)
    if saved is not None:
        config.weights = saved.weights_file
    metrics = runs.run_metrics(root.labels, clusters)
    runs.write_embeddings(out, projected)
    runs.write_run_files(config, parent.paths, clusters, distances_to_centres(Z, clusters), root.labels, metrics,
                         centre_margins(Z, clusters))
    resolved = {**root.summary.get("resolved", {}), "n_clusters": model.n_clusters_,
                "n_clusters_from": "the run refined, and the feedback's groups",
                "weights": saved.weights if saved is not None else config.weights,
                "num_features": int(projected.shape[1]), "normalized": True}
    resolved.pop("embeddings_store", None)
    counts = {"images_found": len(parent.paths), "images_clustered": len(parent.paths), "images_skipped": 0,
              "classes": len(set(root.labels)) if root.labels else None}
    summary = runs.cluster_summary(config, resolved, counts, clusters, {"refine": seconds}, metrics)
    summary.extra["refine"] = info
    summary.write(out)
    return Refinement(out, clusters, info)


def _splits(parent: runs.Run, constraints: Resolved) -> int:
    """How many clusters the user split: pairs of known groups, said to differ, that the
    parent run had put in one cluster (each asks for one more cluster)."""
    group = constraints.group
    pairs = {(min(group[i], group[j]), max(group[i], group[j]), parent.clusters[i]) for i, j in constraints.cannot
             if group[i] >= 0 and group[j] >= 0 and parent.clusters[i] == parent.clusters[j]}
    return len(pairs)


def fit_head(X: np.ndarray, constraints: Resolved) -> ScatterHead:
    """The scatter head fitted on the feedback's groups of at least two images."""
    sizes = np.bincount(constraints.group[constraints.group >= 0], minlength=len(constraints.names))
    usable = np.flatnonzero(sizes >= 2)
    if len(usable) < 2:
        raise DeepclustError(f"the feedback has {len(usable)} class(es) of at least 2 images; refine learns from at "
                             "least 2: name or confirm another cluster, or label more images")
    y = np.where(np.isin(constraints.group, usable), constraints.group, -1)  # -1: in the PCA only
    return ScatterHead(output="whitened", pca_components=PCA_COMPONENTS).fit(X, y)


def _describe(parent: runs.Run, root: runs.Run, constraints: Resolved, clusters: np.ndarray, head: ScatterHead,
              feedback_path: str, seconds: float) -> dict[str, Any]:
    """The refine entry of summary.json: lineage, what the feedback held, what changed."""
    group = constraints.group
    info: dict[str, Any] = {
        "parent": os.path.abspath(parent.folder), "root": os.path.abspath(root.folder),
        "round": int((parent.summary.get("refine") or {}).get("round", 0)) + 1,
        "feedback": os.path.abspath(feedback_path), "feedback_used": FEEDBACK_USED,
        "groups": len(constraints.names), "named_groups": sum(n is not None for n in constraints.names),
        "images_in_groups": int((group >= 0).sum()), "cannot_link": len(constraints.cannot),
        "unknown": int(len(constraints.unknown)), "images_touched": int(constraints.touched.sum()),
        "head_components": int(head.n_components_), "seconds": round(seconds, 3),
        "images_moved": int(_moved(parent.clusters, clusters)),
    }
    if root.labels is not None:
        untouched = ~constraints.touched
        y = np.asarray(root.labels)
        if untouched.any():
            before, after = score_clustering(y[untouched], parent.clusters[untouched]), \
                score_clustering(y[untouched], clusters[untouched])
            info["untouched"] = {"images": int(untouched.sum()), "before": before, "after": after}
    return info


def _moved(before: np.ndarray, after: np.ndarray) -> int:
    """Images whose cluster changed, once the new clusters are matched one-to-one to the old."""
    table, _, _ = contingency(before, after)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return int(len(before) - table[rows, cols].sum())


def _config(root: runs.Run, out: str, k: int, seed: int, algorithm: str) -> ClusterConfig:
    """The new run's config.yaml: the root run's, clustered by refine."""
    values = {k2: v for k2, v in root.summary.get("config", {}).items() if k2 in ClusterConfig.__dataclass_fields__}
    values.update(out=out, n_clusters=k, seed=seed, normalize=True, algorithm=algorithm, cluster_params={}, embeddings=None,
                  images=root.resolve(values["images"]) if values.get("images") else values.get("images"))
    return build_config(ClusterConfig, None, **values)


def _save_head(root: runs.Run, head: ScatterHead, out: str, weights: str | None = None):
    """``head.pt``: the root run's backbone with the head, so predict and the report embed new
    images into the refined space; returns it loaded back from the file (None where the root
    run has no backbone to carry the head)."""
    config = root.summary.get("config", {})
    if root.summary.get("command") != "cluster" or not config.get("backbone") or \
            (root.summary.get("resolved") or {}).get("embeddings_store"):
        log.warning("the root run names no backbone deepclust can load (e.g. an end-to-end or store run): the refined run "
                    "has no head.pt, so predict cannot embed new images into it")
        return None
    flip = bool(config.get("flip_average", False))
    backbone = create_backbone(config["backbone"], weights=weights or root.backbone_weights(),
                               image_size=config.get("image_size"), flip_average=flip, pooling=config.get("pooling"))
    backbone.head = LinearHead(torch.as_tensor(head.mean_, dtype=torch.float32),
                               torch.as_tensor(head.components_, dtype=torch.float32))
    path = os.path.abspath(runs.run_path(out, HEAD))
    save_backbone(backbone, path, config={"refined_from": os.path.abspath(root.folder)}, method="refine")
    saved = create_backbone(config["backbone"], weights=path, image_size=config.get("image_size"), flip_average=flip,
                            pooling=config.get("pooling"))
    saved.weights_file = path  # as the config names it; saved.weights adds the file's hash, as every run records
    return saved


#: How ``refine --finetune`` trains (the EU-moths protocol's CPU settings, fewer and smaller tasks:
#: the feedback's classes hold few images each).
FINETUNE = dict(trainable_stages=1, cache_views=4, epochs=4, milestones=[2, 3], lr=1e-3, n_tasks=60, alpha=0.5,
                scale=[0.6, 1.0], hflip=0.5, color_jitter=0.3)


def _feedback_split(root: runs.Run, group: np.ndarray, classes: np.ndarray, folder: str, seed: int) -> tuple:
    """The feedback's classes as a folder of class folders (symbolic links to the run's
    images) and a split file, a fifth of the classes (at least 2) held back as ``val``;
    returns (images folder, split file, held-back groups)."""
    images = os.path.join(folder, "images")
    held = set(np.random.default_rng(seed).choice(classes, size=max(2, len(classes) // 5), replace=False).tolist())
    names = {int(g): f"class-{int(g):04d}" for g in classes}
    for i in np.flatnonzero(np.isin(group, classes)):
        target = os.path.join(images, names[int(group[i])])
        os.makedirs(target, exist_ok=True)
        link = os.path.join(target, f"{i:06d}-{os.path.basename(root.paths[i])}")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(root.resolve(root.paths[i])), link)
    split = os.path.join(folder, "split.json")
    with open(split, "w", encoding="utf-8") as fh:
        json.dump({"name": "feedback", "subsets": {"train": [names[g] for g in classes if g not in held],
                                                   "val": [names[g] for g in classes if g in held]}}, fh)
    return images, split, held


def _finetune(root: runs.Run, constraints: Resolved, out: str, seed: int, progress: bool) -> tuple:
    """Fine-tune the root run's backbone on the feedback's classes; (every image's new
    embedding, the checkpoint, seconds)."""
    t0 = time.perf_counter()
    config = root.summary.get("config", {})
    if root.summary.get("command") != "cluster" or not config.get("backbone"):
        raise DeepclustError("--finetune needs a run of `deepclust cluster` (its backbone is what learns); "
                             "leave --finetune out")
    group = constraints.group
    sizes = np.bincount(group[group >= 0], minlength=len(constraints.names))
    classes = np.flatnonzero(sizes >= 2)
    if len(classes) < 6:
        raise DeepclustError(f"--finetune needs at least 6 classes of 2 or more images in the feedback (it holds "
                             f"{len(classes)}): name or label more, or refine without --finetune")
    folder = os.path.join(out, "finetune")
    images, split, held = _feedback_split(root, group, classes, folder, seed)
    train_sizes = sorted(sizes[g] for g in classes if g not in held)
    shots = int(max(1, min(5, train_sizes[len(train_sizes) // 2] // 2)))
    n_way = int(min(20, sum(n >= 2 * shots for n in train_sizes)))
    train = build_config(TrainConfig, None, **{
        **FINETUNE, "method": "episodic", "images": images, "split": split, "out": os.path.join(folder, "train"),
        "backbone": config["backbone"], "weights": root.backbone_weights(), "image_size": config.get("image_size"),
        "n_way": n_way, "n_shot": shots, "n_query": shots, "seed": seed, "progress": progress,
        "device": config.get("device", "cpu")})
    log.info("fine-tuning %s on %d classes of the feedback (%d held back to select the epoch)", config["backbone"],
             len(classes) - len(held), len(held))
    trainer = create_method("episodic", train)
    backbone = trainer.fit()
    records = []
    for p in root.paths:
        path = root.resolve(p)
        try:
            stat = os.stat(path)
        except OSError:
            raise DeepclustError(f"the run's image '{p}' is gone; refine without --finetune, or restore it") from None
        records.append(ImageRecord(path=path, relpath=p, folder="", size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    emb = embed_records(records, backbone, embedding_cache(config.get("cache")), batch_size=int(config.get("batch_size", 32)),
                        device=config.get("device", "cpu"), progress=progress, also=[runs.run_path(folder, runs.CACHE)],
                        precision=config.get("precision", "fp32"))
    if emb.skipped:
        raise DeepclustError(f"{len(emb.skipped)} of the run's images can no longer be read (e.g. "
                             f"'{emb.skipped[0][0]}'); refine without --finetune, or restore them")
    return emb.vectors, os.path.abspath(os.path.join(train.out, "best.pt")), time.perf_counter() - t0

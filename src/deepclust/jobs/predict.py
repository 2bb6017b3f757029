"""New images into an existing run's clusters: ``deepclust predict RUN_DIR NEW_IMAGES``.

The run folder holds what prediction needs: the backbone's name, weights reference and
preprocessing (summary.json), whether the features were L2-normalised (config), and the
clustered embeddings with their clusters, from which the centres and each cluster's
spread are recomputed exactly as ``deepclust cluster`` measured its distances.

Each new image goes to the nearest centre (``assign="centre"``, k-means' own rule) or to the
cluster of most of its 5 nearest clustered images (``assign="neighbours"``, for clusters of
any shape, as spectral and density methods find). It is flagged ``far`` (possibly a class the run
did not have, such as a species never seen) when the distance to its nearest clustered
image exceeds the ``far_quantile`` of the same distance among the run's own images (each to
its nearest other one, on a seeded sample of at most 2,000): an image with no close
relative in the run. The distance to the nearest image was measured to tell unseen EU-moth
species from seen ones better than the distance to the centre
(``benchmarks/predict_moths.py``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepclust import runs
from deepclust.cluster.space import cluster_centres, nearest_centres, nearest_member_distance, prepare_features
from deepclust.config import END_TO_END, build_config
from deepclust.data import find_images
from deepclust.data.datasets import load_pixels
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.cache import embedding_cache
from deepclust.features.backbones import create_backbone
from deepclust.features.extract import embed_records
from deepclust.io import check_writable, write_csv, write_json
from deepclust.methods import config_class, create_method
from deepclust.naming import TOP, check_naming, name_images, templates_of

log = logging.getLogger("deepclust")

PREDICTIONS = "predictions.csv"
ASSIGN_RULES = ("centre", "neighbours")


@dataclass
class ClusterModel:
    """Centres of a run's clusters in the space it clustered, and its clustered images."""

    ids: np.ndarray  # (k,) cluster ids (noise has no centre)
    centres: np.ndarray  # (k, d)
    members: np.ndarray  # (n, d) float32, every clustered image (noise included)
    threshold: float  # nearest-image distance above which a new image is far
    normalize: bool
    member_clusters: np.ndarray  # (n,) cluster of each clustered image (-1: noise), for assign="neighbours"

    def assign(self, vectors: np.ndarray, rule: str = "centre", n_neighbours: int = 5
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(clusters, distances to the centre, distances to the nearest clustered image, far)
        of embeddings (n, d). ``rule``: the nearest centre, or the cluster most of the
        ``n_neighbours`` nearest clustered images are in (ties to the nearer; noise images
        do not vote), which follows clusters of any shape."""
        if rule not in ASSIGN_RULES:
            raise DeepclustError(f"assign={rule!r} is not one of {', '.join(ASSIGN_RULES)}")
        X = prepare_features(vectors, self.normalize).astype(np.float64)
        clusters = self.ids[nearest_centres(X, self.centres)]
        if rule == "neighbours":
            clusters = self._vote(X.astype(np.float32), n_neighbours, clusters)
        dist = np.linalg.norm(X - self.centres[np.searchsorted(self.ids, clusters)], axis=1)
        nearest = nearest_member_distance(self.members, X.astype(np.float32))
        return clusters, dist, nearest, nearest > self.threshold

    def _vote(self, X: np.ndarray, k: int, fallback: np.ndarray) -> np.ndarray:
        import faiss

        voters = np.flatnonzero(self.member_clusters >= 0)
        index = faiss.IndexFlatL2(self.members.shape[1])
        index.add(np.ascontiguousarray(self.members[voters], dtype=np.float32))
        _, idx = index.search(np.ascontiguousarray(X), min(k, len(voters)))
        votes = self.member_clusters[voters][idx]  # (n, k), nearest first
        out = fallback.copy()
        for i, row in enumerate(votes):
            values, first, counts = np.unique(row, return_index=True, return_counts=True)
            top = counts == counts.max()
            out[i] = values[top][np.argmin(first[top])]  # a tie goes to the cluster of the nearer image
        return out


def cluster_model(run: runs.Run, far_quantile: float = 0.95, sample: int = 2000, seed: int = 0) -> ClusterModel:
    """The centres (means of the clustered features) of a run, and the far threshold."""
    if not 0 < far_quantile <= 1:
        raise DeepclustError(f"far_quantile={far_quantile!r} must be in (0, 1]")
    normalize = runs.RunSummary.from_dict(run.summary).normalized  # the space the run clustered
    X = prepare_features(run.embeddings, normalize)
    member = run.clusters >= 0
    if not member.any():
        raise DeepclustError(f"'{run.folder}' has no clusters (every image is noise); nothing to predict into")
    if len(X) < 2:
        raise DeepclustError(f"'{run.folder}' clustered a single image; predict needs at least 2")
    ids, centres = cluster_centres(X, run.clusters)
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(X), sample, replace=False)) if len(X) > sample else np.arange(len(X))
    own = nearest_member_distance(X, X[probe], self_index=probe)
    return ClusterModel(ids, centres, X, float(np.quantile(own, far_quantile)), normalize, run.clusters.copy())


@dataclass
class Prediction:
    paths: list[str]
    clusters: np.ndarray
    distances: np.ndarray
    nearest: np.ndarray
    far: np.ndarray
    labels: list[str] | None
    skipped: list[tuple[str, str]]
    summary: dict[str, Any]


def predict_images(run_dir: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike | None = None,
                   far_quantile: float = 0.95, labels: str | None = None, assign: str = "centre", batch_size: int = 32,
                   device: str = "cpu", num_workers: int | None = None, progress: bool = True,
                   names: str | None = None) -> Prediction:
    """Embed the images under ``images`` as the run did and assign each to the nearest
    cluster of ``run_dir``; write ``out`` (default ``RUN_DIR/predict``):
    predictions.csv (path, cluster, distance to its centre, distance to the nearest
    clustered image, far 0/1[, label]), skipped.csv and summary.json.

    A run of ``deepclust cluster`` embeds them with its backbone. A run of an end-to-end
    method (``deepclust train --method mmdc|imc_swav``) passes them, resized as its
    training images were, through the network of its reference seed (restored from
    ``RUN_DIR/seedN/last.pt``; the training images must still be where they were).

    ``names``: a file of candidate names (default: the one the run was named with, ``cluster
    --names``, when it is still there): each image's three most likely names and its
    cluster's most likely name go to predictions.csv (CLIP-family backbones)."""
    t0 = time.perf_counter()
    run = runs.load_run(run_dir)
    if labels not in (None, "folders"):
        raise DeepclustError(f"labels={labels!r} is not known; use folders (or leave it out)")
    if assign not in ASSIGN_RULES:
        raise DeepclustError(f"assign={assign!r} is not one of {', '.join(ASSIGN_RULES)}")
    command = run.summary.get("command")
    if command not in ("cluster", "train") or (command == "train" and run.summary.get("method") not in END_TO_END):
        raise DeepclustError(f"'{run_dir}' was made by `deepclust {command}`"
                             + (f" --method {run.summary.get('method')}" if run.summary.get("method") else "")
                             + "; predict needs a run of `deepclust cluster` or of an end-to-end method "
                             f"({', '.join(END_TO_END)})")
    model = cluster_model(run, far_quantile)
    names = _names_file(run, names)
    if names and command != "cluster":
        raise DeepclustError(f"--names needs a run of `deepclust cluster` with a CLIP-family backbone; '{run_dir}' is "
                             f"an end-to-end {run.summary.get('method')} run: drop --names")
    out = os.fspath(out) if out is not None else runs.run_path(run_dir, "predict")
    check_writable(out)  # e.g. a colleague's read-only run folder: found before the embedding
    embed = _embed_with_backbone if command == "cluster" else _embed_with_network
    paths, vectors, found, skipped, info, seconds, ranked = embed(run, images, out, batch_size, device, num_workers,
                                                                  progress, names)
    os.makedirs(out, exist_ok=True)
    runs.write_skipped(out, skipped)
    if skipped:
        log.warning("skipped %d unreadable image(s); see %s", len(skipped), os.path.join(out, runs.SKIPPED))
    if not paths:
        raise DeepclustError(f"none of the {found} images under '{images}' could be read; see {runs.SKIPPED}")
    clusters, distances, nearest, far = model.assign(vectors, assign)
    y = [os.path.basename(os.path.dirname(p)) for p in paths] if labels == "folders" else None
    named = []
    if ranked is not None:
        first = {}  # each cluster's most likely name, from the run's clusters.csv
        for c, row in runs.read_clusters(run.folder).items():
            found = runs.cluster_names(row)
            if found:
                first[c] = found[0][0]
        named = [[first.get(str(int(c)), "")] + [v for n, s in ranked[i] for v in (n, f"{s:.4f}")]
                 for i, c in enumerate(clusters)]
    write_csv(os.path.join(out, PREDICTIONS), ["path", "cluster", "distance", "nearest_image_distance", "far"]
              + (["label"] if y else [])
              + (["cluster_name"] + [f"{w}_{k}" for k in range(1, TOP + 1) for w in ("name", "score")] if named else []),
              [[p, int(c), f"{d:.6f}", f"{m:.6f}", int(f)] + ([y[i]] if y else []) + (named[i] if named else [])
               for i, (p, c, d, m, f) in enumerate(zip(paths, clusters, distances, nearest, far))])
    summary = {"command": "predict", "run": os.path.abspath(run_dir), "run_id": run.summary.get("run_id"),
               "images": os.fspath(images),
               "assign": assign, "far_quantile": far_quantile, "far_threshold": model.threshold, "working_directory": os.getcwd(),
               "counts": {"images_found": found, "images_predicted": len(paths), "images_skipped": len(skipped),
                          "far": int(far.sum()), "clusters_used": int(len(np.unique(clusters)))},
               **info, **({"names": os.path.abspath(names)} if ranked is not None else {}),
               "timings_seconds": {"embed": round(seconds, 3), "total": round(time.perf_counter() - t0, 3)},
               "versions": runs.versions()}
    write_json(os.path.join(out, "summary.json"), summary)
    return Prediction(paths, clusters, distances, nearest, far, y, skipped, summary)


def _names_file(run: runs.Run, names: str | None) -> str | None:
    """``--names``, else the file the run was named with when it is still there."""
    if names is not None:
        return names
    recorded = ((run.summary.get("resolved") or {}).get("names") or {}).get("file")
    if recorded and not os.path.isfile(recorded):
        log.warning("the run was named from %s, which is gone; predicting without names (pass --names FILE)", recorded)
        return None
    return recorded


def _embed_with_backbone(run, images, out, batch_size, device, num_workers, progress, names=None):
    """The features of a run of ``deepclust cluster``: its backbone, weights and preprocessing."""

    config, resolved = run.summary["config"], run.summary["resolved"]
    records = find_images(images, exclude=[out, run.folder])
    log.info("predicting %d images into the clusters of '%s'", len(records), run.folder)
    backbone = create_backbone(config["backbone"], weights=run.backbone_weights(), image_size=config.get("image_size"),
                               flip_average=bool(config.get("flip_average", False)),
                               pooling=config.get("pooling"))  # embed as the run did
    if backbone.name != resolved.get("backbone") or backbone.weights != resolved.get("weights") or (
            "data_config" in resolved and list(backbone.data_config["input_size"]) != list(resolved["data_config"]["input_size"])):
        raise DeepclustError(f"the backbone loaded now ({backbone.name}, {backbone.weights}) is not the one the run "
                             f"used ({resolved.get('backbone')}, {resolved.get('weights')}); was the checkpoint "
                             "changed or moved? Cluster again, or restore it")
    candidates = check_naming(backbone, names) if names else None  # before the embedding
    fast = bool(config.get("fast_decode", False))  # decode as the run did
    emb = embed_records(records, backbone, embedding_cache(config.get("cache")), batch_size=batch_size,
                        device=resolve_device(device), num_workers=num_workers, progress=progress, fast_decode=fast,
                        also=[runs.run_path(run.folder, runs.CACHE)],  # a run from before the cache was shared
                        precision=config.get("precision", "fp32"))  # embed as the run did
    ranked = None
    if candidates is not None and len(emb.vectors):
        ranked = name_images(backbone, emb.vectors, candidates, templates_of(backbone, config["backbone"]), progress)
    return ([r.path for r in emb.kept(records)], emb.vectors, len(records), emb.skipped_paths(records),
            {"backbone": backbone.name, "weights": backbone.weights}, emb.seconds, ranked)


def _embed_with_network(run, images, out, batch_size, device, num_workers, progress, names=None):
    """The outputs of an end-to-end run's network (its reference seed) for new images."""

    method = run.summary["method"]
    config = build_config(config_class(method), runs.run_path(run.folder, runs.CONFIG))
    config.out, config.device, config.progress = run.folder, device, progress
    training = create_method(method, config)
    seed = int(run.summary["resolved"]["reference_seed"])
    estimator = training.estimator(seed - config.seed)
    source = load_pixels(*run.resolve_data(config.images, config.dataset), config.image_size, config.channels, None, False)
    log.info("restoring the %s network of seed %d from %s", method, seed, training.checkpoint_dir(seed - config.seed))
    t = time.perf_counter()
    estimator.fit(source.images)  # the finished checkpoint: no training, only its outputs
    new = load_pixels(os.fspath(images), None, config.image_size, config.channels, None, progress)
    vectors = estimator.transform(new.images) if len(new.images) else np.zeros((0, 1), np.float32)
    return (list(new.paths), vectors, len(new.paths) + len(new.skipped), list(new.skipped),
            {"method": method, "reference_seed": seed}, time.perf_counter() - t, None)

"""``deepclust select``: score every (backbone, algorithm, k) candidate of a folder of images or
of a finished run without labels, write ``selection.csv``, ``selection.png`` and
``selection.json``, and say which one a criterion picks and how sure it is."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from deepclust import runs
from deepclust.cluster.space import prepare_features
from deepclust.data import find_images
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.backbones import create_backbone
from deepclust.features.cache import embedding_cache
from deepclust.features.extract import embed_records
from deepclust.features.runtime import check_runtime
from deepclust.io import write_json, check_writable, lock_folder
from deepclust.selection import CRITERIA, Selection, progress_callback, select

log = logging.getLogger("deepclust")

CSV, PLOT, CHOICE = "selection.csv", "selection.png", "selection.json"


@dataclass
class SelectOptions:
    """What ``deepclust select`` was asked (the CLI's options)."""

    source: str
    out: str
    ks: list[int]
    algorithms: list[str]
    backbones: list[str]
    criterion: str = "generalization"
    metric: str | None = None
    weights: str = "pretrained"
    image_size: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    runtime: str = "auto"
    seed: int = 0
    normalize: bool = True
    progress: bool = True
    cache: str | None = None


def _is_run(folder: str) -> bool:
    return os.path.isfile(runs.run_path(folder, runs.SUMMARY)) and os.path.isfile(runs.run_path(folder, runs.ASSIGNMENTS))


def _spaces(options: SelectOptions) -> list[tuple[str, np.ndarray]]:
    """(backbone name, prepared features) for each backbone: a run's own embeddings, or the
    images embedded through the shared embedding cache (the one ``cluster`` fills)."""
    if _is_run(options.source):
        run = runs.load_run(options.source)
        name = run.summary.get("resolved", {}).get("backbone", "run")
        if options.backbones and options.backbones != [name]:
            raise DeepclustError(f"'{options.source}' is a run embedded with {name}; to compare backbones, select on "
                                 "its image folder instead")
        normalize = run.summary.get("config", {}).get("normalize", options.normalize)
        return [(name, prepare_features(run.embeddings, normalize))]
    if not os.path.isdir(options.source):
        raise DeepclustError(f"'{options.source}' is neither an image folder nor a run folder")
    records = find_images(options.source)
    device = resolve_device(options.device)
    spaces = []
    for name in options.backbones:
        backbone = create_backbone(name, weights=options.weights, image_size=options.image_size)
        log.info("embedding %d images with %s", len(records), backbone.name)
        emb = embed_records(records, backbone, embedding_cache(options.cache), batch_size=options.batch_size,
                            device=device, progress=options.progress, runtime=options.runtime)
        if not len(emb.vectors):
            raise DeepclustError(f"none of the {len(records)} images in '{options.source}' could be read")
        spaces.append((backbone.name, prepare_features(emb.vectors, options.normalize)))
    if len({len(X) for _, X in spaces}) > 1:
        raise DeepclustError("the backbones could read different images; remove the unreadable ones and run again")
    return spaces


def run_select(options: SelectOptions) -> tuple[Selection, dict]:
    """Score every candidate; write the tables and the plot to ``options.out``; return the
    selection and the choice (``selection.json``)."""
    check_runtime(options.runtime)
    if options.criterion not in CRITERIA:
        raise DeepclustError(f"--criterion {options.criterion!r} is not known; use one of: {', '.join(CRITERIA)}")
    if options.criterion == "c2m" and not options.metric:
        raise DeepclustError("--criterion c2m needs --metric FILE (metric.pt of `deepclust train --method c2m`)")
    check_writable(options.out)
    with lock_folder(options.out):
        t = time.perf_counter()
        spaces = _spaces(options)
        embed_seconds = time.perf_counter() - t
        criteria = [c for c in CRITERIA if c != "c2m" or options.metric]
        n = len(spaces[0][1])
        ks = [k for k in options.ks if k <= n - 1]
        if not ks:
            raise DeepclustError(f"every k asked for is at least the number of images ({n}); ask for fewer clusters")
        candidates = []
        t = time.perf_counter()
        with progress_callback(options.progress, "scoring candidates") as progress:
            for name, X in spaces:
                found = select(X, ks, options.algorithms, criteria=criteria, seed=options.seed, metric=options.metric,
                               backbone=name, progress=progress)
                candidates.extend(found.candidates)
        selection = Selection(candidates, tuple(criteria))
        seconds = time.perf_counter() - t
        selection.write_csv(runs.run_path(options.out, CSV))
        selection.plot(runs.run_path(options.out, PLOT))
        choice = describe_choice(selection, options, embed_seconds, seconds, n)
        write_json(runs.run_path(options.out, CHOICE), choice)
    return selection, choice


def describe_choice(selection: Selection, options: SelectOptions, embed_seconds: float, seconds: float, n: int) -> dict:
    """selection.json: what each criterion picks, the one asked for first, and the command
    that makes that clustering."""
    best = selection.best(options.criterion)
    picks = {}
    for criterion in selection.criteria:
        b = selection.best(criterion)
        picks[criterion] = {"backbone": b.backbone, "algorithm": b.algorithm, "k": b.k,
                            "score": b.scores[criterion], "weak": selection.weak(criterion),
                            "runner_ups": [{"backbone": c.backbone, "algorithm": c.algorithm, "k": c.k}
                                           for c in selection.runner_ups(criterion)[:5]]}
    images, backbone = options.source, best.backbone
    if _is_run(options.source):  # the run's own images and backbone
        config = runs.read_summary(options.source).get("config", {})
        images, backbone = config.get("images"), config.get("backbone")
    command = None
    if images:
        command = " ".join(["deepclust", "cluster", images, "--out", "RUN_DIR", "--algorithm", best.algorithm,
                            "--n-clusters", str(best.k), "--seed", str(options.seed)]
                           + (["--backbone", backbone] if backbone else []))
    return {"criterion": options.criterion, "chosen": picks[options.criterion], "criteria": picks,
            "images": n, "candidates": len(selection.candidates), "seconds": {"embed": round(embed_seconds, 2),
                                                                               "score": round(seconds, 2)},
            "command": command}

"""The run folder of an end-to-end clustering method (MMDC, IMC-SwAV).

:class:`EndToEndTraining` is ``deepclust train --method <name>`` for a method whose
network outputs the clusters itself: it loads the images (a folder or a benchmark
array), trains ``config.runs`` seeded estimators (each checkpointed in ``out/seedN``,
so an interrupted run resumes), combines them with the lowest-loss or majority-vote
ensemble, and writes the same files as ``deepclust cluster`` (``assignments.csv``,
``embeddings.npy``, ``summary.json``, ``metrics.json``, ``skipped.csv``,
``config.yaml``) plus ``history.csv``. A method supplies its estimator, the stages it
scores (``main``, and ``refined`` for MMDC's refinement) and the distance column.

The estimators share :func:`image_tensor` (their input contract), :func:`build_trunk`
(a timm network trained from scratch) and :func:`run_checkpoint` (their ``last.pt``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from typing import Any

import numpy as np
import torch

import deepclust.features.networks  # noqa: F401  registers the small networks with timm
from deepclust import runs
from deepclust.checkpoint import RunCheckpoint
from deepclust.cluster.space import centre_margins
from deepclust.config import write_config
from deepclust.data.datasets import load_pixels
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.io import check_writable, lock_folder, write_csv
from deepclust.methods.ensemble import combine_runs
from deepclust.metrics import score_clustering
from deepclust.parallel.ddp import launch_rank
from deepclust.validation import check_choice, check_int

log = logging.getLogger("deepclust")


def image_tensor(images) -> torch.Tensor:
    """Images as a float tensor (n, C, H, W) in [0, 1]: from an array or tensor of shape
    (n, C, H, W) or (n, H, W), uint8 or already in [0, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DeepclustError(f"images must have shape (n, C, H, W) or (n, H, W); got {tuple(x.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DeepclustError("image values must lie in [0, 1] (or be uint8); divide by 255 first")
    return x


def run_checkpoint(checkpoint_dir: str | None, fmt: str, what: str) -> RunCheckpoint:
    """``<checkpoint_dir>/last.pt`` of an estimator's seeded run (nothing kept when None)."""
    return RunCheckpoint(os.path.join(checkpoint_dir, "last.pt") if checkpoint_dir else None, fmt, what)


def fingerprint(x: torch.Tensor) -> str:
    """A cheap identity of a dataset: its shape and a hash of a strided sample of its values."""
    flat = x.reshape(-1)
    step = max(1, flat.numel() // 200_000)
    digest = hashlib.sha1(flat[::step].numpy().tobytes()).hexdigest()[:16]
    return f"{tuple(x.shape)}:{digest}"


def check_backbone(backbone, suggestions: str) -> None:
    """Refuse a name timm does not know, suggesting ``suggestions`` (e.g. ``mmdc_vgg3 or
    cifar_resnet20``)."""
    import timm

    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise DeepclustError(f"unknown backbone '{backbone}'; try {suggestions} (or any timm model name)")


def build_trunk(backbone: str, in_chans: int, backbone_kwargs: dict | None = None) -> torch.nn.Module:
    """A timm network without classifier, randomly initialised, for ``in_chans`` channels."""
    import timm

    try:
        return timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **(backbone_kwargs or {}))
    except TypeError as exc:
        raise DeepclustError(f"backbone_kwargs={backbone_kwargs!r} do not fit '{backbone}': {exc}") from None


class EndToEndTraining:
    """Train seeded runs of an end-to-end clustering estimator and write a run folder.

    Subclasses set ``name`` and implement :meth:`estimator`, :meth:`stages` and
    :meth:`distances`; they may add to :meth:`resolved`.

    Attributes (after :meth:`fit`)
    ------------------------------
    runs_ : list of dict
        Per run: ``seed``, ``loss``, ``labels`` (by stage), ``history``, ``seconds``,
        ``estimator``.
    ensembles_ : dict
        ``{stage: deepclust.methods.ensemble.combine_runs(...)}``: the lowest-loss run and the
        majority vote of the runs (MMDC's two ensembles).
    labels_ : int64 ndarray
        The clusters written to the run folder.
    data_ : deepclust.data.datasets.PixelData
    summary_ : dict
    """

    name = ""
    #: The estimator each seeded run fits; ``config.params`` are its arguments.
    estimator_class: type | None = None
    #: Its arguments that the run itself sets (from the shared fields, per run).
    MANAGED = ("n_clusters", "device", "random_state", "checkpoint_dir", "verbose")

    def __init__(self, config):
        self.config = config

    # -- what a method provides --------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The settings ``config.params`` may hold: the estimator's arguments less those the run sets."""
        return [n for n in inspect.signature(cls.estimator_class.__init__).parameters
                if n not in ("self", *cls.MANAGED)]

    def params(self) -> dict[str, Any]:
        """``config.params`` checked against the estimator's signature and completed with its
        defaults, as plain YAML values (a default tuple becomes a list)."""
        given = dict(self.config.params or {})
        names = self.param_names()
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise DeepclustError(f"{self.name} has no setting {', '.join(unknown)}; its settings are: {', '.join(names)}")
        signature = inspect.signature(self.estimator_class.__init__).parameters
        out = {}
        for name in names:
            default = signature[name].default
            value = given.get(name, default)
            if isinstance(value, tuple):
                value = list(value)
            out[name] = {} if name == "backbone_kwargs" and value is None else value
        return out

    def estimator(self, run: int):
        """The estimator of run ``run`` (seed ``config.seed + run``), checkpointed in ``out/seedN``;
        it logs one line per epoch (``-q`` silences them; ``--no-progress`` only hides bars)."""
        c = self.config
        return self.estimator_class(n_clusters=c.n_clusters, device=c.device, random_state=c.seed + run,
                                    checkpoint_dir=self.checkpoint_dir(run), verbose=True, **self.params())

    def stages(self, est) -> dict[str, np.ndarray]:
        """The labelings a fitted estimator is scored on, final stage last."""
        return {"main": est.labels_}

    def distances(self, est, labels: np.ndarray) -> np.ndarray:
        """Per image, the distance to its cluster's centre (``assignments.csv``)."""
        raise NotImplementedError

    def resolved(self) -> dict:
        return {}

    # -- shared ------------------------------------------------------------------------
    def checkpoint_dir(self, run: int) -> str:
        return os.path.join(self.config.out, f"seed{self.config.seed + run}")

    def _check(self) -> None:
        c = self.config
        if not c.out:
            raise DeepclustError("no run folder given; pass --out RUN_DIR")
        if c.n_clusters is None:
            raise DeepclustError(f"{self.name} needs the number of clusters; pass --n-clusters K")
        check_int("runs", c.runs, 1)
        check_int("seed", c.seed, 0)
        check_int("image_size", c.image_size, 8)
        check_choice("ensemble", c.ensemble, ("majority", "lowest_loss"))
        if c.labels not in (None, "folders"):
            raise DeepclustError(f"labels={c.labels!r} is not known; use folders (or leave it out)")
        c.params = self.params()  # every setting, defaults included, as config.yaml records them
        self.estimator(0).check_params()

    def fit(self):
        """Train, combine and write the run folder (rank 0 writes, holding its lock)."""
        self._check()  # also: an out folder is given
        if launch_rank() != 0:
            return self._fit()
        check_writable(self.config.out)
        with lock_folder(self.config.out):
            runs.retire_outputs(self.config.out)
            return self._fit()

    def _summary(self, data, reference: dict, stage_names: list, seconds: float) -> runs.RunSummary:
        """summary.json of the run folder: the resolved settings, counts, and with labels the
        scores of every run and both ensembles at every stage."""
        c = self.config
        metrics, scores = None, None
        if data.labels is not None:
            metrics = score_clustering(data.labels, self.labels_)
            metrics.update(n_clusters=int(len(np.unique(self.labels_))), n_classes=len(set(data.labels)),
                           n_images=len(data.images))
            scores = {"runs": [{"seed": r["seed"], "loss": r["loss"],
                                **{s: score_clustering(data.labels, r["labels"][s]) for s in stage_names}}
                               for r in self.runs_],
                      "ensembles": {stage: {k: score_clustering(data.labels, e[k]) for k in ("lowest_loss", "majority")}
                                    for stage, e in self.ensembles_.items()}}
        sizes = np.bincount(self.labels_, minlength=c.n_clusters)
        final_stage = stage_names[-1]
        return runs.RunSummary(
            command="train", method=self.name, config=c.to_dict(),
            resolved={"n_clusters": c.n_clusters, "n_clusters_from": "--n-clusters", "backbone": c.backbone,
                      "device": c.device, "image_shape": list(data.images.shape[1:]),
                      "labels_from": ("ensemble: " + c.ensemble if c.runs > 1 else "single run")
                      + (" after refinement" if final_stage == "refined" else ""),
                      "reference_seed": reference["seed"], "normalized": False, **self.resolved()},
            seed=c.seed,
            counts={"images_found": len(data.images) + len(data.skipped), "images_clustered": len(data.images),
                    "images_skipped": len(data.skipped),
                    "clusters": int((sizes > 0).sum()), "noise": 0, "cluster_size_min": int(sizes.min()),
                    "cluster_size_max": int(sizes.max()),
                    "classes": len(set(data.labels)) if data.labels is not None else None},
            timings_seconds={"total": round(seconds, 3)}, metrics=metrics,
            extra={"runs": [{"seed": r["seed"], "loss": r["loss"], "seconds": r["seconds"], "epochs": len(r["history"]),
                             "train_seconds": round(sum(h["seconds"] for h in r["history"]), 1)} for r in self.runs_],
                   "scores": scores})

    def outcome(self) -> list[str]:
        """What ``deepclust train`` prints when the run folder is written (by rank 0)."""
        if launch_rank() != 0:
            return []
        metrics = self.summary_["metrics"]
        lines = [f"clustered {len(self.labels_)} images into {self.summary_['counts']['clusters']} clusters; "
                 f"results in {self.config.out}"]
        if metrics:
            lines.append("  ".join(f"{k} {metrics[k]:.4f}" for k in ("ACC", "NMI", "AMI", "ARI")))
        return lines

    def _fit(self):
        c = self.config
        resolve_device(c.device)
        t_start = time.perf_counter()
        data = load_pixels(c.images, c.dataset, c.image_size, c.channels, c.labels, c.progress)
        n = len(data.images)
        log.info("%s on %d images of %s, %d cluster(s), %d run(s)", self.name, n,
                 "x".join(map(str, data.images.shape[1:])), c.n_clusters, c.runs)
        os.makedirs(c.out, exist_ok=True)
        is_main = launch_rank() == 0  # under torchrun, rank 0 writes the run folder
        if is_main:
            runs.write_skipped(c.out, data.skipped)
        if data.skipped:
            log.warning("skipped %d unreadable image(s); see %s", len(data.skipped), runs.run_path(c.out, runs.SKIPPED))
        self.runs_ = []
        for run in range(c.runs):
            est = self.estimator(run)
            log.info("[run %d/%d] seed %d", run + 1, c.runs, est.random_state)
            t = time.perf_counter()
            est.fit(data.images, data.labels)
            self.runs_.append({"seed": est.random_state, "loss": est.loss_, "labels": self.stages(est),
                               "history": est.history_, "seconds": round(time.perf_counter() - t, 1), "estimator": est})
        losses = [r["loss"] for r in self.runs_]
        stage_names = list(self.runs_[0]["labels"])
        self.ensembles_ = {s: combine_runs([r["labels"][s] for r in self.runs_], losses, c.n_clusters) for s in stage_names}
        final = self.ensembles_[stage_names[-1]]
        reference = self.runs_[final["reference"]]
        self.labels_ = final[c.ensemble] if c.runs > 1 else reference["labels"][stage_names[-1]]
        ref_est = reference["estimator"]

        summary = self._summary(data, reference, stage_names, time.perf_counter() - t_start)
        self.summary_ = summary.to_dict()
        self.data_ = data
        if not is_main:
            return self
        runs.write_embeddings(c.out, ref_est.outputs_)
        runs.write_assignments(c.out, data.paths, self.labels_, self.distances(ref_est, self.labels_), data.labels,
                               centre_margins(ref_est.outputs_, self.labels_))
        columns = ["seed"] + list(dict.fromkeys(k for r in self.runs_ for h in r["history"] for k in h))
        write_csv(os.path.join(c.out, "history.csv"), columns,
                  [[r["seed"]] + [_cell(h.get(k)) for k in columns[1:]] for r in self.runs_ for h in r["history"]])
        write_config(runs.run_path(c.out, runs.CONFIG), c)
        if summary.metrics is not None:
            runs.write_metrics(c.out, summary.metrics)
        summary.write(c.out)
        return self


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)

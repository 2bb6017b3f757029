"""``deepclust train --method linear``: a linear scatter head on a frozen backbone.

The core method's cheapest form: the training classes of a split are embedded once (the
run's cache), :class:`~deepclust.methods.scatter_head.ScatterHead` minimises eq. 1 on them in
closed form for a few projection sizes and shrinkages, and the setting whose projected
embeddings cluster the validation classes best (k-means cluster accuracy, as the other
methods select their epoch) is kept. ``best.pt`` is the backbone plus that head: ``deepclust
cluster --weights``, ``predict``, ``export-onnx`` and the report embed through it like any
fine-tuned backbone (the cache is keyed by the file).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from deepclust.cluster.space import prepare_features
from deepclust.config import TrainConfig
from deepclust.data import find_images, load_split
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.backbones import Backbone, LinearHead, create_backbone, save_backbone
from deepclust.features.cache import embedding_cache
from deepclust.features.extract import embed_records
from deepclust.io import check_writable, lock_folder, write_csv, write_json
from deepclust.methods.finetune.base import FineTuning, validation_scores
from deepclust.methods.scatter_head import ScatterHead
from deepclust.parallel.ddp import DistInfo

log = logging.getLogger("deepclust")

BEST, HISTORY, SUMMARY = "best.pt", "history.csv", "train_summary.json"
#: The settings tried; each is fitted on the training classes and scored on the validation classes.
SHRINKAGES = ("auto", 0.1, 0.3)
SIZES = (None, 64, 32)  # None: number of training classes - 1


class LinearHeadTraining:
    """Fit a scatter head on the training classes, select it on the validation classes.

    Attributes (after :meth:`fit`)
    ------------------------------
    backbone_ : Backbone
        The backbone with the selected head (from ``best.pt``).
    history_ : list of dict
        One row per setting tried (``setting 0`` is the backbone without a head).
    best_epoch_ : int
        The selected row of ``history_`` (1 = the first head setting), for the CLI's report.
    best_score_ : float
        Its validation cluster accuracy.
    """

    name = "linear"

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dist_ = DistInfo()  # one process: the head is fitted in seconds

    def _embed(self, backbone: Backbone, subset: str) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        records = find_images(c.images, classes=load_split(c.split).classes(subset), exclude=[c.out])
        emb = embed_records(records, backbone, embedding_cache(), batch_size=c.batch_size,
                            device=resolve_device(c.device), num_workers=c.num_workers, progress=c.progress)
        if emb.skipped:
            log.warning("skipped %d unreadable image(s) of the %s classes", len(emb.skipped), subset)
        return prepare_features(emb.vectors, True), np.array([r.folder for r in emb.kept(records)])

    def fit(self) -> Backbone:
        c = self.config
        if not c.images or not c.split or not c.out:
            raise DeepclustError("the linear head needs --images DIR, --split NAME|FILE and --out DIR")
        check_writable(c.out)
        with lock_folder(c.out, "training folder"):
            return self._fit()

    def _fit(self) -> Backbone:
        c = self.config
        t0 = time.perf_counter()
        backbone = create_backbone(c.backbone, weights=c.weights, image_size=c.image_size)
        X_train, y_train = self._embed(backbone, c.train_subset)
        X_val, y_val = self._embed(backbone, c.val_subset)
        if len(set(y_val)) < 2:
            raise DeepclustError(f"subset '{c.val_subset}' has {len(set(y_val))} class; selection needs >= 2")
        # row 0: the backbone alone, for reference; the best head setting is kept whatever it scores
        history = [{"setting": 0, "n_components": backbone.num_features, "shrinkage": "",
                    **validation_scores(X_val, y_val, c)}]
        best, best_head = None, None
        for size in SIZES:
            for shrinkage in SHRINKAGES:
                head = ScatterHead(n_components=size, shrinkage=shrinkage).fit(X_train, y_train)
                row = {"setting": len(history), "n_components": head.n_components_,
                       "shrinkage": round(float(head.shrinkage_), 4),
                       **validation_scores(head.transform(X_val), y_val, c)}
                history.append(row)
                log.info("head of %d components, shrinkage %s: validation CA %.3f", row["n_components"], shrinkage,
                         row["val_CA"])
                if best is None or row["val_CA"] > best["val_CA"]:
                    best, best_head = row, head
        if best["val_CA"] < history[0]["val_CA"]:
            log.warning("the best head clusters the validation classes worse than the backbone alone (CA %.3f < "
                        "%.3f): label more classes, or cluster with the backbone as it is", best["val_CA"],
                        history[0]["val_CA"])
        backbone.head = LinearHead(best_head.mean_, best_head.components_)
        save_backbone(backbone, os.path.join(c.out, BEST), config=c.to_dict(), method=self.name,
                      validation={k: v for k, v in best.items() if k.startswith("val_")})
        keys = list(history[0])
        write_csv(os.path.join(c.out, HISTORY), keys, [[row.get(k, "") for k in keys] for row in history])
        write_json(os.path.join(c.out, SUMMARY), {"method": self.name, "config": c.to_dict(), "best_setting": best,
                                                  "checkpoint": os.path.join(c.out, BEST), "history": history,
                                                  "seconds": round(time.perf_counter() - t0, 1)})
        self.history_, self.best_epoch_, self.best_score_ = history, best["setting"], best["val_CA"]
        self.backbone_ = create_backbone(backbone.name, weights=os.path.join(c.out, BEST), image_size=c.image_size)
        return self.backbone_

    outcome = FineTuning.outcome

"""What every fine-tuning method shares: data, frozen stages, cache, loop, selection, checkpoints.

A method fills in three things (easyfsl's ``FewShotClassifier`` is the model):

* :meth:`FineTuning.make_head` - a trainable module on top of the features, or None;
* :meth:`FineTuning.epoch_batches` - the lists of training-image indices of one epoch;
* :meth:`FineTuning.batch_loss` - the loss of one batch, given its features.

Everything else is here: the backbone split into a frozen prefix and a trainable tail,
the cache of what the frozen prefix computes for a few augmented views of every image,
SGD with a multi-step schedule, model selection by the K-means cluster accuracy of the
validation classes after every epoch, checkpoints (state dicts plus the resolved
config, never pickled modules) written atomically, resume after an interruption, and
DDP under ``torchrun`` (tasks split over ranks, gradients averaged, seeds offset by
rank, only rank 0 validates and writes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from deepclust.checkpoint import RunCheckpoint
from deepclust.cluster.space import make_clusterer, prepare_features
from deepclust.config import TrainConfig, write_config
from deepclust.data import find_images, load_image, load_split
from deepclust.data.folders import ImageRecord, describe_load_error
from deepclust.data.transforms import eval_transform, training_transform
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.backbones import Backbone, create_backbone, save_backbone
from deepclust.io import check_writable, lock_folder, write_csv, write_json, write_npy
from deepclust.metrics import score_clustering
from deepclust.parallel.ddp import (
    DistInfo,
    average_buffers,
    barrier,
    init_distributed,
    wrap_ddp,
)
from deepclust.validation import check_float, check_int

log = logging.getLogger("deepclust")

TRAIN_FORMAT = "deepclust.train/1"
LAST, BEST, HISTORY, SUMMARY, SKIPPED = "last.pt", "best.pt", "history.csv", "train_summary.json", "skipped.csv"
# settings that may change between an interrupted run and its resumption
# (``epochs`` too: a finished run can be extended)
_RESUMABLE_CHANGES = {"out", "progress", "num_workers", "device", "cache_dir", "epochs"}
_HEAD_MODULES = {"global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "pre_logits", "attn_pool"}
_STAGE_CONTAINERS = {"blocks", "stages", "layers", "features"}


# --------------------------------------------------------------------------- stages
def feature_layers(model: nn.Module) -> tuple[list[nn.Module], list[int]]:
    """The modules of ``forward_features`` in order, and which of them are stages.

    Stage containers (``blocks``, ``stages``, ``layers``) are opened into their items;
    ``layerN`` children (torchvision-style ResNets) are stages too; the classifier and
    pooling modules are left out. For the CNNs of timm (EfficientNet, ResNet(V2),
    ConvNeXt) running these modules one after the other *is* ``forward_features``;
    :func:`is_sequential` checks it.
    """
    layers: list[nn.Module] = []
    stages: list[int] = []
    for name, child in model.named_children():
        if name in _HEAD_MODULES:
            continue
        if name in _STAGE_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            for item in child:
                stages.append(len(layers))
                layers.append(item)
        else:
            if re.fullmatch(r"layer\d+", name):
                stages.append(len(layers))
            layers.append(child)
    return layers, stages


def freeze_stages(model: nn.Module, trainable_stages: int | None, name: str = "") -> tuple[list[nn.Module], int]:
    """Freeze every stage of ``model`` but the last ``trainable_stages`` (None: freeze nothing).

    Returns the modules of :func:`feature_layers` and the position of the first
    trainable one (0 when everything trains).
    """
    layers, stages = feature_layers(model)
    if trainable_stages is None:
        return layers, 0
    if not stages:
        raise DeepclustError(
            f"trainable_stages={trainable_stages}: {name or type(model).__name__} has no stages deepclust can split "
            "(e.g. an open_clip image tower); use null to train all of it, or a timm backbone")
    if trainable_stages > len(stages):
        raise DeepclustError(
            f"trainable_stages={trainable_stages} but {name or type(model).__name__} has {len(stages)} stages; "
            f"use 1..{len(stages)} or null for all"
        )
    start = stages[-trainable_stages]
    for layer in layers[:start]:
        layer.requires_grad_(False)
    for p in model.parameters(recurse=False):  # e.g. a ViT's cls_token and pos_embed
        p.requires_grad_(False)
    return layers, start


@torch.no_grad()
def is_sequential(model: nn.Module, layers: Sequence[nn.Module], image_size: int) -> bool:
    """Whether running ``layers`` in order reproduces ``model.forward_features`` (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        x = x.to(next(model.parameters()).device)
        h = x
        for layer in layers:
            h = layer(h)
        ref = model.forward_features(x)
        return h.shape == ref.shape and bool(torch.allclose(h, ref, rtol=1e-4, atol=1e-5))
    except Exception:  # a layer that needs more than its predecessor's output
        return False
    finally:
        model.train(was_training)


class TrainNet(nn.Module):
    """The part of the backbone that trains, plus the method's head.

    ``forward(x, from_prefix)`` maps images (or, with ``from_prefix``, cached outputs of
    the frozen prefix) to ``(features, head_output)``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[nn.Module], start: int, head: nn.Module | None):
        super().__init__()
        self.model = model
        self.head = head
        self._layers = list(layers)  # submodules of model: not registered twice
        self.start = start

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers[: self.start]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor, from_prefix: bool = False):
        if from_prefix:
            for layer in self._layers[self.start:]:
                x = layer(x)
            feats = self.model.forward_head(x, pre_logits=True)
        else:
            feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return feats, (self.head(feats) if self.head is not None else None)

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self._layers[: self.start]:
            layer.eval()  # frozen batch-norm statistics stay as they are
        return self


# --------------------------------------------------------------------------- data
class LabelledImages:
    """The images of some classes of a split, decoded once, with integer labels."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str]):
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self.records: list[ImageRecord] = []
        self.images = []
        self.skipped: list[tuple[str, str]] = []
        for r in records:
            try:
                img = load_image(r.path)
                img.load()
            except Exception as exc:  # a broken file is reported and left out
                self.skipped.append((r.path, describe_load_error(exc)))
                continue
            self.records.append(r)
            self.images.append(img)
        self.labels = np.array([index[r.folder] for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: Sequence[int], transform) -> torch.Tensor:
        return torch.stack([transform(self.images[i]) for i in indices])


def _load_subset(config: TrainConfig, subset: str) -> LabelledImages:
    classes = load_split(config.split).classes(subset)
    records = find_images(config.images, classes=classes, exclude=[config.out])
    data = LabelledImages(records, classes)
    if data.skipped:
        log.warning("skipped %d unreadable image(s) of the %s classes", len(data.skipped), subset)
    return data


def validation_scores(vectors: np.ndarray, labels, config: TrainConfig, n_classes: int | None = None
                      ) -> dict[str, float]:
    """How a method's embeddings of the validation classes cluster: CA, ARI and NMI of K-means
    (k = ``n_classes``, default the labels' classes; ``config.val_seeds`` seeds), averaged;
    ``val_`` keys. Every core-family method selects its epoch or setting by this."""
    X = prepare_features(vectors, config.normalize)
    k = n_classes if n_classes is not None else len(set(np.asarray(labels).tolist()))
    runs = [score_clustering(labels, make_clusterer("kmeans", k, config.seed + s).fit_predict(X), ("CA", "ARI", "NMI"))
            for s in range(config.val_seeds)]
    return {f"val_{m}": float(np.mean([r[m] for r in runs])) for m in runs[0]}


# --------------------------------------------------------------------------- the method
class FineTuning:
    """Base of the fine-tuning methods; see the module docstring.

    Parameters
    ----------
    config : TrainConfig

    Attributes
    ----------
    backbone_ : Backbone
        The selected backbone (weights of the best validation epoch) after :meth:`fit`.
    history_ : list of dict
        One row per epoch (epoch 0 = the weights before training): losses, validation
        CA/ARI/NMI, learning rate, seconds.
    best_epoch_ : int
    best_score_ : float
        Validation cluster accuracy of the selected epoch.
    """

    name = "base"

    def __init__(self, config: TrainConfig):
        self.config = config

    # -- what a method fills in ------------------------------------------------
    def make_head(self, n_classes: int, num_features: int) -> nn.Module | None:
        return None

    def epoch_batches(self, labels: np.ndarray, epoch: int, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def batch_loss(self, features: torch.Tensor, head_out: torch.Tensor | None, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def check_config(self, n_train: int, train_labels: np.ndarray) -> None:
        """Method-specific checks, before any heavy work."""

    # -- the shared loop -------------------------------------------------------
    def _check(self) -> None:
        c = self.config
        if not c.images:
            raise DeepclustError("no image folder given; set images: FOLDER in the config")
        if not c.out:
            raise DeepclustError("no training folder given; pass --out DIR or set out: DIR")
        if not c.split:
            raise DeepclustError("training needs a class split (train and val classes); set split: NAME|FILE")
        for name, minimum in (("epochs", 1), ("n_tasks", 1), ("batch_size", 1), ("val_seeds", 1),
                              ("cache_views", 0), ("seed", 0), ("num_workers", 0)):
            check_int(name, getattr(c, name), minimum)
        for name in ("alpha", "hflip", "color_jitter", "gamma", "momentum"):
            check_float(name, getattr(c, name), 0.0, 1.0)
        if not isinstance(c.lr, (int, float)) or c.lr <= 0 or not isinstance(c.weight_decay, (int, float)) or c.weight_decay < 0:
            raise DeepclustError(f"lr={c.lr!r} must be > 0 and weight_decay={c.weight_decay!r} >= 0")
        if not isinstance(c.milestones, (list, tuple)) or not all(isinstance(m, int) and m >= 1 for m in c.milestones):
            raise DeepclustError(f"milestones={c.milestones!r} must be a list of epochs >= 1, e.g. [3, 6]")
        if not (isinstance(c.scale, (list, tuple)) and len(c.scale) == 2 and 0 < c.scale[0] <= c.scale[1] <= 1):
            raise DeepclustError(f"scale={c.scale!r} must be [low, high] with 0 < low <= high <= 1, e.g. [0.6, 1.0]")
        check_int("trainable_stages", c.trainable_stages, 1, optional=True)
        if c.cache_views and c.trainable_stages is None:
            raise DeepclustError("cache_views needs a frozen part; set trainable_stages (e.g. 1) or cache_views: 0")

    def fit(self) -> Backbone:
        """Train, select on the validation classes, and return the selected backbone."""
        c = self.config
        c.images, c.out = os.path.expanduser(c.images), os.path.expanduser(c.out)
        self._check()
        info, device = init_distributed(resolve_device(c.device))
        self.dist_ = info
        if not info.is_main:
            return self._fit(info, device)
        check_writable(c.out, "--out")
        with lock_folder(c.out, "training folder"):  # rank 0 writes the folder: it holds the lock
            return self._fit(info, device)

    def _fit(self, info: DistInfo, device: torch.device) -> Backbone:
        c = self.config
        train = _load_subset(c, c.train_subset)
        val = _load_subset(c, c.val_subset)
        if len(val.classes) < 2:
            raise DeepclustError(f"subset '{c.val_subset}' has {len(val.classes)} class; model selection needs >= 2")
        self.check_config(len(train), train.labels)
        if info.is_main:
            os.makedirs(c.out, exist_ok=True)
            write_csv(os.path.join(c.out, SKIPPED), ["path", "reason"], train.skipped + val.skipped)

        backbone, net, optimizer, scheduler = self._build(len(train.classes), device)
        cached = c.cache_views > 0

        train_views = val_inputs = None
        if cached:
            train_views, val_inputs = self._prefix_cache(net, backbone, train, val, device, info)
        rng = np.random.default_rng([c.seed, info.rank])
        torch.manual_seed(c.seed + info.rank)
        random.seed(c.seed + info.rank)

        history, best, first_epoch = self._restore(net, optimizer, scheduler, rng, info)

        # on a CPU, buffers follow rank 0 at every forward (DDP's default) and are averaged after each epoch below
        ddp_net = wrap_ddp(net, device, info)
        if not history and info.is_main:
            history.append({"epoch": 0, **self._validate(net, backbone, val, val_inputs, device), "lr": c.lr})
            log.info("epoch 0 (before training): validation CA %.3f", history[0]["val_CA"])

        for epoch in range(first_epoch, c.epochs + 1):
            t0 = time.perf_counter()
            batches = self.epoch_batches(train.labels, epoch, rng)
            if info.enabled:  # every rank draws its own tasks (seed + rank); share the count
                per_rank = math.ceil(len(batches) / info.world_size)
                batches = batches[:per_rank]
            bar = tqdm(batches, desc=f"{self.name} epoch {epoch}/{c.epochs}", unit="batch",
                       disable=not (c.progress and info.is_main), dynamic_ncols=True)
            sums = self._train_epoch(ddp_net, optimizer, bar, train, train_views, rng, device)
            scheduler.step()
            row = {"epoch": epoch, **{k: v / max(len(batches), 1) for k, v in sums.items()},
                   "lr": optimizer.param_groups[0]["lr"]}
            average_buffers(net, info)  # collective: every rank takes part
            rng_states = self._gather_rng(rng, info)
            if info.is_main:
                row.update(self._validate(net, backbone, val, val_inputs, device))
                row["seconds"] = round(time.perf_counter() - t0, 1)
                history.append(row)
                improved = row["val_CA"] > best["CA"]
                if improved:
                    best = {"epoch": epoch, "CA": row["val_CA"]}
                    save_backbone(backbone, os.path.join(c.out, BEST), config=c.to_dict(), method=self.name,
                                  epoch=epoch, validation={k: v for k, v in row.items() if k.startswith("val_")})
                self._save_last(net, optimizer, scheduler, epoch, history, best, rng_states)
                self._write_history(history, best)
                log.info("epoch %d: loss %.4f, validation CA %.3f ARI %.3f%s", epoch, row.get("loss", float("nan")),
                         row["val_CA"], row["val_ARI"], " (best so far)" if improved else "")
            barrier(info)

        if info.enabled:  # rank 0 validated: share what it found
            shared = [history, best]
            torch.distributed.broadcast_object_list(shared, src=0)
            history, best = shared
        self.history_ = history
        self.net_ = net
        self.best_epoch_, self.best_score_ = best["epoch"], best["CA"]
        self.backbone_ = create_backbone(backbone.name, weights=os.path.join(c.out, BEST), image_size=c.image_size)
        return self.backbone_

    def _build(self, n_classes: int, device: torch.device) -> tuple:
        """(backbone, network with its head and frozen stages, optimiser, schedule)."""
        c = self.config
        torch.manual_seed(c.seed)  # identical random weights on every rank
        backbone = create_backbone(c.backbone, weights=c.weights, image_size=c.image_size)
        self._train_transform = training_transform(backbone.data_config, tuple(c.scale), c.hflip, c.color_jitter)
        model = backbone.model
        layers, start = freeze_stages(model, c.trainable_stages, backbone.name)
        if c.cache_views > 0 and not is_sequential(model, layers, backbone.image_size):
            raise DeepclustError(
                f"cache_views needs a backbone whose stages run one after the other; {backbone.name} does not "
                "(e.g. a ViT); set cache_views: 0"
            )
        head = self.make_head(n_classes, backbone.num_features)
        net = TrainNet(model, layers, start, head).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        log.info("%s fine-tuning of %s: %d of %d parameters train (%s)", self.name, backbone.name,
                 sum(p.numel() for p in params), sum(p.numel() for p in net.parameters()),
                 "all stages" if start == 0 else f"last {c.trainable_stages} stage(s)")
        optimizer = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(c.milestones), gamma=c.gamma)
        return backbone, net, optimizer, scheduler

    def outcome(self) -> list[str]:
        """What ``deepclust train`` prints when the backbone is selected (by rank 0)."""
        if not self.dist_.is_main:
            return []
        out = self.config.out
        return [f"best epoch {self.best_epoch_}: validation cluster accuracy {self.best_score_:.3f}",
                f"checkpoint {out}/best.pt (use: deepclust cluster IMAGES --weights {out}/best.pt)"]

    # -- pieces of the loop ----------------------------------------------------
    def _restore(self, net, optimizer, scheduler, rng: np.random.Generator, info: DistInfo
                 ) -> tuple[list[dict[str, Any]], dict, int]:
        """(history, best, first epoch) of the run in ``out``: from ``last.pt`` with the
        weights, optimiser, schedule and every rank's random states restored, else a new run
        (whose config rank 0 writes)."""
        c = self.config
        state = self._checkpoint().load(c.to_dict(), may_change=_RESUMABLE_CHANGES)
        if state is None:
            if info.is_main:
                write_config(os.path.join(c.out, "train_config.yaml"), c)
            return [], {"epoch": -1, "CA": -1.0}, 1
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        saved_rng = state.get("rng", [])
        if info.world_size == len(saved_rng):  # else: new random states (e.g. a new world size)
            numpy_state, torch_state, python_state = saved_rng[info.rank]
            rng.bit_generator.state = numpy_state
            torch.set_rng_state(torch_state)
            random.setstate(python_state)
        log.info("resuming %s after epoch %d of %d", c.out, state["epoch"], c.epochs)
        return state["history"], state["best"], state["epoch"] + 1

    def _train_epoch(self, ddp_net, optimizer, bar, train: LabelledImages, train_views, rng: np.random.Generator,
                     device) -> dict[str, float]:
        """One pass over the batches of ``bar`` (a progress bar over index lists): images
        augmented afresh, or a random cached view of each when ``train_views`` holds the
        frozen stages' outputs. Returns the summed losses."""
        cached = train_views is not None
        sums: dict[str, float] = {}
        ddp_net.train()
        for batch in bar:
            if cached:
                view = torch.from_numpy(rng.integers(0, train_views.shape[0], size=len(batch)))
                x = train_views[view, torch.as_tensor(batch)].to(device, torch.float32)
            else:
                x = train.batch(batch, self._train_transform).to(device)
            y = torch.as_tensor(train.labels[batch], device=device)
            feats, head_out = ddp_net(x, from_prefix=cached)
            loss, parts = self.batch_loss(feats, head_out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        bar.close()
        return sums

    def _prefix_cache(self, net: TrainNet, backbone: Backbone, train: LabelledImages, val: LabelledImages,
                      device: torch.device, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the frozen prefix for ``cache_views`` augmented views of every training
        image and the plain view of every validation image; one file per view, so an
        interrupted cache resumes where it stopped."""
        c = self.config
        key = json.dumps({
            "backbone": backbone.signature(), "start": net.start, "views": c.cache_views, "seed": c.seed,
            "scale": list(c.scale), "hflip": c.hflip, "color_jitter": c.color_jitter,
            "train": [r.relpath for r in train.records], "val": [r.relpath for r in val.records],
        }, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        folder = os.path.join(c.cache_dir or os.path.join(c.out, "cache"), f"prefix-{digest}")
        files = [("val", None)] + [(f"train-view{v}", v) for v in range(c.cache_views)]
        if info.is_main:
            os.makedirs(folder, exist_ok=True)
            net.eval()
            todo = [(name, v) for name, v in files if not os.path.exists(os.path.join(folder, name + ".npy"))]
            for name, v in todo:
                data = val if v is None else train
                if v is None:
                    transform = eval_transform(backbone.data_config)
                else:
                    torch.manual_seed(c.seed * 1000 + v)
                    random.seed(c.seed * 1000 + v)
                    transform = self._train_transform
                out = []
                with torch.inference_mode():
                    for s in tqdm(range(0, len(data), c.batch_size), desc=f"caching frozen stages: {name}",
                                  unit="batch", disable=not c.progress, dynamic_ncols=True):
                        idx = range(s, min(s + c.batch_size, len(data)))
                        out.append(net.prefix(data.batch(idx, transform).to(device)).half().cpu().numpy())
                write_npy(os.path.join(folder, name + ".npy"), np.concatenate(out))
        barrier(info)
        val_inputs = torch.from_numpy(np.load(os.path.join(folder, "val.npy")))
        views = torch.stack([torch.from_numpy(np.load(os.path.join(folder, f"train-view{v}.npy")))
                             for v in range(c.cache_views)])
        return views, val_inputs

    @torch.no_grad()
    def _validate(self, net: TrainNet, backbone: Backbone, val: LabelledImages, val_inputs, device) -> dict[str, float]:
        """Cluster accuracy (and ARI, NMI) of K-means on the validation classes."""
        c = self.config
        net.eval()
        transform = eval_transform(backbone.data_config)
        feats = []
        for s in range(0, len(val), c.batch_size):
            idx = list(range(s, min(s + c.batch_size, len(val))))
            if val_inputs is not None:
                f, _ = net(val_inputs[idx].to(device, torch.float32), from_prefix=True)
            else:
                f, _ = net(val.batch(idx, transform).to(device))
            feats.append(f.float().cpu().numpy())
        return validation_scores(np.concatenate(feats), val.labels, c, len(val.classes))

    def _checkpoint(self) -> RunCheckpoint:
        return RunCheckpoint(os.path.join(self.config.out, LAST), TRAIN_FORMAT, "training",
                             "use another --out, or delete the folder to start over")

    def _save_last(self, net, optimizer, scheduler, epoch, history, best, rng_states) -> None:
        state = {
            "method": self.name,
            "epoch": epoch,
            "net": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "best": best,
            "rng": rng_states,
        }
        self._checkpoint().save(state, self.config.to_dict())

    @staticmethod
    def _gather_rng(rng: np.random.Generator, info: DistInfo) -> list:
        """Every rank's random states (tasks, augmentation), so a resumed run draws the same."""
        mine = (rng.bit_generator.state, torch.get_rng_state(), random.getstate())
        if not info.enabled:
            return [mine]
        states = [None] * info.world_size
        torch.distributed.all_gather_object(states, mine)
        return states

    def _write_history(self, history: list[dict], best: dict) -> None:
        c = self.config
        keys = []
        for row in history:
            keys += [k for k in row if k not in keys]
        write_csv(os.path.join(c.out, HISTORY), keys, [[row.get(k, "") for k in keys] for row in history])
        write_json(os.path.join(c.out, SUMMARY), {
            "method": self.name,
            "config": c.to_dict(),
            "best_epoch": best["epoch"],
            "best_val_CA": best["CA"],
            "checkpoint": os.path.join(c.out, BEST),
            "epochs_done": max((row["epoch"] for row in history), default=0),
            "history": history,
        })

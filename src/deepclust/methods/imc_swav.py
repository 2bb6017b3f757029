"""IMC-SwAV: SwAV self-labelling with a mutual-information clustering head, one phase.

Ntelemis, Jin and Thomas, "Information Maximization Clustering via Multi-View
Self-Labelling" (2021). An encoder is trained from scratch with SwAV's swapped
prediction: the projections of every multi-crop view are compared with trainable
prototypes (codes ``u = softmax(cos(z, c) / tau)``, eq. 2) and each view predicts the
Sinkhorn codes ``q`` of the high-resolution views (eq. 1, 3-4). At the same time a
classifier head on the encoder features is trained to make its k-way predictions ``Y``
informative about the codes ``U`` of every view: eq. 6, ``H(Y|U) - beta H(Y)`` averaged
over all V x V pairs of views. An image's cluster is the classifier's argmax.

As in the authors' code, the clustering objective trains the classifier only (eq. 6 is
minimised "with respect to the parameters of the classifier"): the classifier reads
detached encoder features and detached codes, and the encoder learns from the swapped
prediction. The losses and Sinkhorn are plain functions in :mod:`deepclust.losses`;
:class:`IMCSwAV` is the estimator (checkpoints, exact resume, DDP under ``torchrun``);
:class:`IMCSwAVTraining` is ``deepclust train --method imc_swav``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepclust.data.transforms import multi_crop
from deepclust.errors import DeepclustError
from deepclust.losses import multi_view_information_loss, swapped_prediction_loss
from deepclust.methods.end_to_end import (
    EndToEndTraining,
    build_trunk,
    check_backbone,
    fingerprint,
    image_tensor,
    run_checkpoint,
)
from deepclust.metrics import score_clustering
from deepclust.parallel.ddp import (
    average_buffers,
    barrier,
    init_distributed,
    rank_seed,
    wrap_ddp,
)
from deepclust.validation import check_float, check_int

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepclust.imc_swav/1"


class IMCSwAVNet(nn.Module):
    """Encoder (a trunk with ``num_features``), SwAV's projection head (MLP to ``proj_dim``,
    L2-normalised) and prototypes (``n_prototypes`` unit vectors, a linear layer without
    bias), and the classifier head A (an MLP with two hidden layers) to ``n_clusters``."""

    def __init__(self, trunk: nn.Module, n_clusters: int, n_prototypes: int = 1000, proj_dim: int = 128,
                 proj_hidden: int = 2048, cls_hidden: int = 512):
        super().__init__()
        width = int(trunk.num_features)
        self.trunk = trunk
        self.projector = nn.Sequential(nn.Linear(width, proj_hidden), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                                       nn.Linear(proj_hidden, proj_dim))
        self.prototypes = nn.Linear(proj_dim, n_prototypes, bias=False)
        self.classifier = nn.Sequential(
            nn.Linear(width, cls_hidden), nn.BatchNorm1d(cls_hidden), nn.ReLU(inplace=True),
            nn.Linear(cls_hidden, cls_hidden), nn.BatchNorm1d(cls_hidden), nn.ReLU(inplace=True),
            nn.Linear(cls_hidden, n_clusters),
        )
        self.normalise_prototypes()

    @torch.no_grad()
    def normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features and L2-normalised projections of a batch."""
        features = self.trunk(x)
        return features, F.normalize(self.projector(features), dim=1)

    def forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Prototype scores (cosines, m x k') and classifier logits (m x k) of every view.

        Views of the same resolution go through the encoder together (as in SwAV); the
        classifier reads the encoder features without a gradient into the encoder.
        """
        scores, logits = [None] * len(views), [None] * len(views)
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            m = len(views[start])
            features, z = self.embed(torch.cat(views[start:end]))
            s, y = self.prototypes(z), self.classifier(features.detach())
            for i in range(start, end):
                j = i - start
                scores[i], logits[i] = s[j * m:(j + 1) * m], y[j * m:(j + 1) * m]
            start = end
        return scores, logits


def imc_swav_loss(scores: list[torch.Tensor], logits: list[torch.Tensor], n_assign: int, temperature: float = 0.1,
                  epsilon: float = 0.05, sinkhorn_iters: int = 3, beta: float = 4.0,
                  distributed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss of one batch: SwAV's swapped prediction (eq. 1) with Sinkhorn codes
    of the first ``n_assign`` views, plus the multi-view clustering objective (eq. 6)
    between the classifier's predictions and the detached prototype codes of every view.

    Returns
    -------
    (total, swapped, information) scalar tensors.
    """

    swav = swapped_prediction_loss(scores, n_assign, temperature, sinkhorn_iters, epsilon, distributed=distributed)
    codes = [F.softmax(s.detach() / temperature, dim=1) for s in scores]
    mi = multi_view_information_loss([F.softmax(lg, dim=1) for lg in logits], codes, beta)
    return swav + mi, swav, mi


def default_crops(image_size: int) -> list:
    """The paper's multi-crop for an image side: 2 views of 7/8 of it over 0.2-1.0 of the
    area and 4 views of 9/16 over 0.08-0.4 (2x28+4x18 for 32 px)."""
    return [[2, max(8, round(image_size * 7 / 8)), [0.2, 1.0]], [4, max(8, round(image_size * 9 / 16)), [0.08, 0.4]]]


class IMCSwAV:
    """IMC-SwAV (Ntelemis, Jin and Thomas, 2021), one seeded run.

    Every epoch, each mini-batch is cut into multi-crop views (``crops``); the encoder,
    projection head and prototypes are trained with SwAV's swapped prediction (targets
    from Sinkhorn-Knopp on the high-resolution views, used for every other view) and the
    classifier head with the multi-view mutual-information objective (eq. 6). The
    prototypes are re-normalised every step and frozen for the first ``warmup_steps``
    steps, during which the learning rate also rises linearly. An image's cluster is the
    classifier's argmax on the whole (uncropped) image.

    Parameters
    ----------
    n_clusters : int
        k, the classifier's outputs.
    backbone : str
        timm name of the encoder, trained from scratch: ``cifar_resnet18`` (the paper's
        ResNet-18 with a small-input stem, for 32-96 px), ``cifar_resnet20`` (a CPU-sized
        ResNet), or any timm model.
    backbone_kwargs : dict or None
    n_prototypes : int
        k', the prototypes (the paper: 1000).
    proj_dim, proj_hidden : int
        Output and hidden width of the projection head (SwAV: 128, 2048).
    cls_hidden : int
        Width of the classifier's two hidden layers.
    temperature : float
        tau of the codes' softmax (eq. 2; the paper: 0.1).
    epsilon : float
        Entropy weight of Sinkhorn-Knopp (eq. 3; 0.05).
    sinkhorn_iters : int
        Sinkhorn-Knopp iterations (3).
    beta : float
        Weight of the marginal entropy H(Y) in eq. 6 (4).
    crops : list or None
        ``[[count, size, [low, high]], ...]``: views per resolution, high resolution first;
        the first group's views give the Sinkhorn targets. None: :func:`default_crops`.
    flip : bool
        Random horizontal flips (off for digits and characters).
    color_jitter : float
        Strength of brightness, contrast and saturation jitter (0: none).
    grey_prob : float
        Probability of turning a colour view grey.
    epochs, batch_size : int
    lr : float
        Adam learning rate (the authors' code: 5e-4, betas 0.8 and 0.999).
    weight_decay : float
    warmup_steps : int
        Steps of linear learning-rate warm-up with frozen prototypes.
    milestones : list of int
        Epochs after which the learning rate is multiplied by ``gamma``.
    gamma : float
    eval_every : int
        With labels given to :meth:`fit`, score the clusters every this many epochs (and
        after the last) for the learning curve; the labels are never used for training.
    device : str
    random_state : int or None
    checkpoint_dir : str or None
        Folder for ``last.pt``, written after every epoch; a later ``fit`` with the same
        settings and data resumes from it (a finished run is only loaded).
    verbose : bool

    Attributes
    ----------
    labels_ : int64 ndarray of shape (n,)
    crops_ : list
        The multi-crop used (``crops`` or the default for the image size).
    loss_ : float
        Mean training loss (swapped prediction + eq. 6) of the last epoch.
    outputs_ : float32 ndarray of shape (n, proj_dim)
        L2-normalised projections of the whole images (the method's embedding).
    history_ : list of dict
        One row per epoch: epoch, swav, mi, loss, seconds, and ACC, NMI, ARI when scored.
    net_ : IMCSwAVNet
    """

    def __init__(self, n_clusters: int, backbone: str = "cifar_resnet18", backbone_kwargs: dict | None = None,
                 n_prototypes: int = 1000, proj_dim: int = 128, proj_hidden: int = 2048, cls_hidden: int = 512,
                 temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iters: int = 3, beta: float = 4.0,
                 crops=None, flip: bool = True, color_jitter: float = 0.4, grey_prob: float = 0.2, epochs: int = 100,
                 batch_size: int = 256, lr: float = 5e-4, weight_decay: float = 1e-5, warmup_steps: int = 200,
                 milestones=(150, 300, 400), gamma: float = 0.4, eval_every: int = 1, device: str = "cpu",
                 random_state=None, checkpoint_dir: str | None = None, verbose: bool = False):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.backbone_kwargs = backbone_kwargs
        self.n_prototypes = n_prototypes
        self.proj_dim = proj_dim
        self.proj_hidden = proj_hidden
        self.cls_hidden = cls_hidden
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iters = sinkhorn_iters
        self.beta = beta
        self.crops = crops
        self.flip = flip
        self.color_jitter = color_jitter
        self.grey_prob = grey_prob
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.milestones = milestones
        self.gamma = gamma
        self.eval_every = eval_every
        self.device = device
        self.random_state = random_state
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    # settings that define a run; a checkpoint made with others is not resumed
    _RUN_KEYS = ("n_clusters", "backbone", "backbone_kwargs", "n_prototypes", "proj_dim", "proj_hidden", "cls_hidden",
                 "temperature", "epsilon", "sinkhorn_iters", "beta", "flip", "color_jitter", "grey_prob", "batch_size",
                 "lr", "weight_decay", "warmup_steps", "milestones", "gamma", "random_state")

    @property
    def loss_curve_(self) -> list[float]:
        return [h["loss"] for h in self.history_]

    def check_params(self) -> None:
        check_backbone(self.backbone, "cifar_resnet18 or cifar_resnet20")
        check_int("n_clusters", self.n_clusters, 2)
        for name in ("n_prototypes", "proj_dim", "proj_hidden", "cls_hidden", "sinkhorn_iters", "epochs", "eval_every"):
            check_int(name, getattr(self, name), 1)
        check_int("batch_size", self.batch_size, 2)
        check_int("warmup_steps", self.warmup_steps, 0)
        for name in ("temperature", "epsilon", "lr", "gamma"):
            check_float(name, getattr(self, name), 0.0)
            if getattr(self, name) <= 0:
                raise DeepclustError(f"{name}={getattr(self, name)!r} must be a positive number")
        for name in ("beta", "weight_decay", "color_jitter"):
            check_float(name, getattr(self, name), 0.0)
        check_float("grey_prob", self.grey_prob, 0.0, 1.0)
        if not isinstance(self.milestones, (list, tuple)) or not all(isinstance(m, int) and m >= 1 for m in self.milestones):
            raise DeepclustError(f"milestones={self.milestones!r} must be a list of epochs >= 1, e.g. [150, 300, 400]")
        if self.crops is not None:
            self._check_crops(self.crops)

    @staticmethod
    def _check_crops(crops) -> None:
        example = "e.g. [[2, 28, [0.2, 1.0]], [4, 18, [0.08, 0.4]]]"
        if not isinstance(crops, (list, tuple)) or not crops:
            raise DeepclustError(f"crops={crops!r} must be a list of [count, size, [low, high]], {example}")
        total = 0
        for group in crops:
            ok = isinstance(group, (list, tuple)) and len(group) == 3
            if ok:
                count, size, scale = group
                ok = (isinstance(count, int) and count >= 0 and isinstance(size, int) and size >= 8
                      and isinstance(scale, (list, tuple)) and len(scale) == 2
                      and all(isinstance(v, (int, float)) for v in scale) and 0 < scale[0] <= scale[1] <= 1)
            if not ok:
                raise DeepclustError(f"crops entry {group!r} must be [count >= 0, size >= 8, [low, high]] with "
                                     f"0 < low <= high <= 1, {example}")
            total += count
        if crops[0][0] < 1 or total < 2:
            raise DeepclustError(f"crops={crops!r} needs at least one high-resolution view (the first entry) and two "
                                 f"views in all, {example}")

    def _crops(self, image_size: int) -> list:
        """``crops`` (checked by :meth:`check_params`) or the default for the image size, as plain lists."""
        crops = self.crops if self.crops is not None else default_crops(image_size)
        return [[int(c), int(s), [float(a), float(b)]] for c, s, (a, b) in crops]

    def _settings(self, crops: list) -> dict:
        out = {k: getattr(self, k) for k in self._RUN_KEYS}
        out["backbone_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in (self.backbone_kwargs or {}).items()}
        out["milestones"] = [int(m) for m in self.milestones]
        out["crops"] = crops
        return out

    @staticmethod
    def _inputs(x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.5

    def _build(self, in_chans: int) -> IMCSwAVNet:
        return IMCSwAVNet(build_trunk(self.backbone, in_chans, self.backbone_kwargs), self.n_clusters, self.n_prototypes,
                          self.proj_dim, self.proj_hidden, self.cls_hidden)

    def _load(self, checkpoint, data_id: str, settings: dict) -> dict | None:
        state = checkpoint.load(settings, data_id)
        if state is not None and len(state["history"]) > self.epochs:
            raise DeepclustError(f"the checkpoint in '{self.checkpoint_dir}' has {len(state['history'])} epochs, more "
                                 f"than the {self.epochs} asked for; ask for at least as many or use another checkpoint_dir")
        return state

    def _lr_at(self, step: int, epoch: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr * warm * self.gamma ** sum(epoch >= m for m in self.milestones)

    def fit(self, images, y=None) -> "IMCSwAV":
        """Train on ``images`` (array or tensor of shape (n, C, H, W) or (n, H, W), values
        in [0, 1] or uint8). ``y``, if given, only scores the clusters during training
        (``history_``). Resumes from ``checkpoint_dir`` when it holds this run. Under
        ``torchrun`` every rank trains on its share of each batch (DDP)."""

        self.check_params()
        x_all = image_tensor(images)
        n = len(x_all)
        if n < self.n_clusters:
            raise DeepclustError(f"n_clusters={self.n_clusters} must be <= the number of images ({n})")
        if x_all.shape[-1] != x_all.shape[-2]:
            raise DeepclustError(f"IMC-SwAV's crops need square images; got {tuple(x_all.shape[-2:])}: resize them")
        if y is not None and len(y) != n:
            raise DeepclustError(f"y has {len(y)} labels for {n} images")
        crops = self.crops_ = self._crops(x_all.shape[-1])
        settings = self._settings(crops)
        dist_info, device = init_distributed(torch.device(self.device))
        seed = int(np.random.default_rng(self.random_state).integers(2**31 - 1))
        torch.manual_seed(seed)
        net = self._build(x_all.shape[1]).to(device, memory_format=torch.channels_last)  # ~20 % faster convolutions
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.8, 0.999), weight_decay=self.weight_decay)
        data_id = fingerprint(x_all)
        self.history_ = []
        step = 0
        checkpoint = run_checkpoint(self.checkpoint_dir, CHECKPOINT_FORMAT, "IMC-SwAV")
        state = self._load(checkpoint, data_id, settings)
        if state is not None:
            net.load_state_dict(state["net"])
            optimizer.load_state_dict(state["optimizer"])
            self.history_, step = state["history"], state["step"]
            if self.history_ and self.verbose:
                log.info("resuming IMC-SwAV from %s after epoch %d", checkpoint.path, len(self.history_))
        model = wrap_ddp(net, device, dist_info)
        n_high = crops[0][0]
        aug = dict(crops=[(c, s, tuple(sc)) for c, s, sc in crops], flip=self.flip, jitter=float(self.color_jitter),
                   grey_prob=float(self.grey_prob))
        labels_true = None if y is None else np.asarray(y)
        for epoch in range(len(self.history_), self.epochs):
            t0 = time.perf_counter()
            net.train()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(rank_seed(seed, epoch)))
            gen = torch.Generator().manual_seed(rank_seed(seed, epoch, dist_info.rank + 1))
            sums, batches, step = self._epoch(net, model, optimizer, x_all, order, gen, aug, n_high, step, epoch,
                                              dist_info, device)
            average_buffers(net, dist_info)
            row = {"epoch": epoch + 1, **{k: v / max(batches, 1) for k, v in sums.items()},
                   "seconds": time.perf_counter() - t0}
            last = epoch + 1 == self.epochs
            if labels_true is not None and ((epoch + 1) % self.eval_every == 0 or last):
                row.update({k: v for k, v in score_clustering(labels_true, self._predict(net, x_all)).items()
                            if k in ("ACC", "NMI", "ARI")})
            self.history_.append(row)
            if self.verbose:
                scored = f" ACC {row['ACC']:.3f}" if "ACC" in row else ""
                log.info("IMC-SwAV epoch %d/%d swav %.4f mi %.4f%s (%.0f s)", epoch + 1, self.epochs, row["swav"],
                         row["mi"], scored, row["seconds"])
            if dist_info.is_main:
                checkpoint.save({"net": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                 "history": self.history_}, settings, data_id)
            barrier(dist_info)
        self.net_ = net
        self.loss_ = float(self.history_[-1]["loss"])
        proba, self.outputs_ = self._forward_all(net, x_all)
        self.labels_ = proba.argmax(1).astype(np.int64)
        return self

    def _epoch(self, net, model, optimizer, x_all, order, gen, aug: dict, n_high: int, step: int, epoch: int,
               dist_info, device) -> tuple[dict, int, int]:
        """One pass over ``order`` (this rank's share of each global batch): multi-crop views,
        the swapped-prediction and information losses, prototypes frozen during the warm-up.
        Returns the summed losses, the number of batches and the step count after it."""
        bs = self.batch_size
        sums = {"swav": 0.0, "mi": 0.0, "loss": 0.0}
        batches = 0
        for s in range(0, len(order), bs):
            idx = order[s: s + bs]
            idx = idx[dist_info.rank::dist_info.world_size]  # this rank's share of the global batch
            if len(idx) < 2:
                continue
            for group in optimizer.param_groups:
                group["lr"] = self._lr_at(step, epoch)
            net.normalise_prototypes()
            views = [self._inputs(v).to(device).contiguous(memory_format=torch.channels_last)
                     for v in multi_crop(x_all[idx], gen, **aug)]
            loss, swav, mi = imc_swav_loss(*model(views), n_high, self.temperature, self.epsilon,
                                           self.sinkhorn_iters, self.beta, distributed=dist_info.enabled)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step < self.warmup_steps:  # prototypes frozen during the warm-up
                net.prototypes.weight.grad = None
            optimizer.step()
            step += 1
            batches += 1
            for key, value in (("swav", swav), ("mi", mi), ("loss", loss)):
                sums[key] += float(value.detach())
        return sums, batches, step

    @torch.no_grad()
    def _forward_all(self, net: IMCSwAVNet, x: torch.Tensor, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        net.eval()
        device = next(net.parameters()).device
        probs, zs = [], []
        for s in range(0, len(x), batch):
            features, z = net.embed(self._inputs(x[s: s + batch]).to(device))
            probs.append(F.softmax(net.classifier(features), dim=1).cpu())
            zs.append(z.cpu())
        return torch.cat(probs).numpy(), torch.cat(zs).numpy()

    def _predict(self, net: IMCSwAVNet, x: torch.Tensor) -> np.ndarray:
        return self._forward_all(net, x)[0].argmax(1).astype(np.int64)

    def _fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise DeepclustError("this IMC-SwAV is not fitted yet; call fit first")

    def predict_proba(self, images) -> np.ndarray:
        """The classifier's cluster probabilities (n x k)."""
        self._fitted()
        return self._forward_all(self.net_, image_tensor(images))[0]

    def transform(self, images) -> np.ndarray:
        """The L2-normalised projections of ``images`` (the method's embedding)."""
        self._fitted()
        return self._forward_all(self.net_, image_tensor(images))[1]

    def predict(self, images) -> np.ndarray:
        """Cluster of each image: the classifier's argmax."""
        return self.predict_proba(images).argmax(1).astype(np.int64)

    def fit_predict(self, images, y=None) -> np.ndarray:
        return self.fit(images, y).labels_


class IMCSwAVTraining(EndToEndTraining):
    """``deepclust train --method imc_swav``: train ``config.runs`` seeded IMC-SwAV networks
    on a folder of images (or a benchmark array) and write a run folder like ``deepclust
    cluster`` (see :class:`~deepclust.methods.end_to_end.EndToEndTraining`). With labels,
    every run's ``history.csv`` rows carry ACC, NMI and ARI (the learning curve). The
    embedding is the projection head's output; the distance is to the cluster's mean
    projection."""

    name = "imc_swav"

    estimator_class = IMCSwAV

    def distances(self, est: IMCSwAV, labels: np.ndarray) -> np.ndarray:
        z = est.outputs_
        out = np.zeros(len(labels))
        for j in np.unique(labels):
            members = labels == j
            out[members] = np.linalg.norm(z[members] - z[members].mean(0), axis=1)
        return out

    def resolved(self) -> dict:
        return {"crops": self.runs_[0]["estimator"].crops_}

"""Multi-Modal Deep Clustering (MMDC): the pieces of the algorithm, as plain functions.

Shiran and Weinshall, "Multi-Modal Deep Clustering: Unsupervised Partitioning of
Images", ICPR 2020. A network is trained, end to end, to map every image onto a target
point drawn once from a mixture of K Gaussians projected onto the unit sphere; the
targets of each mini-batch are re-assigned among its images with the Hungarian method
before every SGD step (eq. 1), and the cluster of an image is the nearest mixture mean
(eq. 3). Ensembles of seeded runs are combined by the lowest loss or by a majority vote
after aligning every run's labels to the lowest-loss run.

The pure maths (target sampler, per-batch re-assignment, cluster rule, ensemble vote)
are plain functions; :class:`MMDC` is the estimator that trains one network (with the
optional refinement stage, checkpoints and exact resume); :func:`combine_runs` makes the
two ensembles of the paper from several seeded runs.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from deepclust.cluster import create_clusterer
from deepclust.data.transforms import (
    augment,  # noqa: F401  (MMDC's transformation g; re-exported)
    rotations,
    sobel,
)
from deepclust.errors import DeepclustError
from deepclust.methods.end_to_end import (
    EndToEndTraining,
    build_trunk,
    check_backbone,
    fingerprint,
    image_tensor,
    run_checkpoint,
)
from deepclust.methods.ensemble import align_labels, combine_runs, majority_vote  # noqa: F401  (MMDC's ensembles; re-exported)
from deepclust.parallel.ddp import (
    average_buffers,
    barrier,
    init_distributed,
    rank_seed,
    wrap_ddp,
)
from deepclust.validation import as_generator, check_float, check_int

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepclust.mmdc/1"


def gmm_targets(n: int, n_clusters: int, sigma: float = 0.05, random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` target points from the paper's mixture (eq. 2), projected onto the sphere.

    Components are equally likely; component ``k`` is the normal distribution with mean
    the one-hot vector ``e_k`` of R^K and covariance ``sigma * I`` (the paper: 0.05). Each
    draw ``u`` becomes the target ``u / ||u||``.

    Parameters
    ----------
    n : int
        Number of targets (one per image).
    n_clusters : int
        K, the number of components and the dimension of the targets.
    sigma : float
        Variance of every coordinate (the covariance is ``sigma * I``).
    random_state : int, numpy Generator or None

    Returns
    -------
    targets : float32 ndarray of shape (n, n_clusters)
        Unit-norm rows.
    components : int64 ndarray of shape (n,)
        The component each target was drawn from.
    """
    check_int("n", n, 1)
    check_int("n_clusters", n_clusters, 2)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise DeepclustError(f"sigma={sigma!r} must be a positive number (the paper uses 0.05)")
    rng = as_generator(random_state)
    components = rng.integers(0, n_clusters, size=n)
    u = rng.normal(0.0, np.sqrt(sigma), size=(n, n_clusters))
    u[np.arange(n), components] += 1.0
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    return (u / np.maximum(norms, 1e-12)).astype(np.float32), components.astype(np.int64)


def reassign_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The permutation of a mini-batch's own targets that minimises the summed Euclidean
    distance between outputs and targets (the Hungarian step of NAT / MMDC, eq. 1).

    Parameters
    ----------
    outputs : Tensor of shape (b, K)
        The batch's normalised network outputs.
    targets : Tensor of shape (b, K)
        The targets the batch's images hold now, row ``i`` belonging to image ``i``.

    Returns
    -------
    LongTensor of shape (b,)
        ``order`` such that image ``i`` now holds ``targets[order[i]]``. The identity is an
        admissible answer, so the total distance never increases.
    """
    if outputs.shape != targets.shape or outputs.ndim != 2:
        raise ValueError(f"outputs and targets must both be (b, K); got {tuple(outputs.shape)} and {tuple(targets.shape)}")
    cost = torch.cdist(outputs.detach().double(), targets.detach().double()).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return torch.from_numpy(order).to(outputs.device)


def nearest_mean(outputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Cluster of each output: the nearest mixture mean ``e_k`` (eq. 3).

    ``||f - e_k||^2 = ||f||^2 + 1 - 2 f_k``, so the nearest mean is the largest coordinate.
    """
    values = outputs.detach().cpu().numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs)
    return np.argmax(values, axis=1).astype(np.int64)


class MMDCNet(nn.Module):
    """A trunk (any timm-style network with ``num_features``) with MMDC's two heads: a
    linear layer to K outputs, L2-normalised (the embedding aligned with the targets), and
    a three-layer perceptron that predicts one of four rotations (the auxiliary task)."""

    def __init__(self, trunk: nn.Module, n_clusters: int):
        super().__init__()
        width = int(trunk.num_features)
        self.trunk = trunk
        self.cluster_head = nn.Linear(width, n_clusters)
        self.rotation_head = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width), nn.ReLU(inplace=True),
            nn.Linear(width, 4),
        )

    def forward(self, x: torch.Tensor, rotation: bool = False) -> torch.Tensor:
        """The normalised cluster outputs, or with ``rotation`` the rotation logits (one
        forward for both, so that DDP sees every step)."""
        if rotation:
            return self.rotation_head(self.trunk(x))
        return F.normalize(self.cluster_head(self.trunk(x)), dim=1)

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x, rotation=True)


def default_lr(backbone: str) -> float:
    """The paper's learning rate for a trunk: 0.01 for ResNets, 0.05 for the VGG trunks."""
    return 0.01 if "resnet" in backbone.lower() else 0.05


class MMDC:
    """Multi-Modal Deep Clustering (Shiran and Weinshall, ICPR 2020), one seeded run.

    A network (trunk + L2-normalised linear layer to K outputs) is trained from scratch to
    map every image onto its own target point, drawn once from a mixture of K Gaussians
    (means: the one-hot vectors, covariance ``sigma * I``) projected onto the unit sphere.
    Before every SGD step the mini-batch's targets are re-assigned among its images with
    the Hungarian method; each image appears ``repetitions`` times under random
    transformations (crop, flip, colour jitter), all pulled to its one target (eq. 1).
    With ``rotation_task``, clustering epochs alternate with RotNet epochs (a 3-layer MLP
    head on the same trunk predicts 0/90/180/270 degrees). An image's cluster is its
    nearest mixture mean (eq. 3). The optional refinement stage (section 3.5) then trains
    ``refine_epochs`` more epochs towards the mixture means chosen by k-means on the
    outputs, which drops the equal-size assumption.

    Parameters
    ----------
    n_clusters : int
        K: the number of clusters and of mixture components (the output dimension).
    backbone : str
        timm name of the trunk, trained from scratch: ``mmdc_vgg3`` (the paper's VGG, 3
        blocks, for 28-32 px), ``mmdc_vgg4`` (larger images), ``cifar_resnet20`` ...
        ``cifar_resnet56`` (small-input ResNets), or any timm model.
    backbone_kwargs : dict or None
        Passed to timm, e.g. ``{"widths": [32, 64, 128]}`` for a narrower VGG.
    sobel : bool
        Feed Sobel gradients instead of the image (the paper, for natural images).
    repetitions : int
        r, the augmented copies of every image per clustering step (the paper: 3).
    rotation_task : bool
        Alternate clustering epochs with RotNet epochs (odd epochs rotate).
    epochs : int
        Epochs of the main stage (clustering and rotation epochs both count).
    refine_epochs : int
        Epochs of the refinement stage after the main stage (0: none).
    batch_size : int
        Images per mini-batch (the paper: 128; r times as many rows go through the net).
    lr : float or None
        SGD learning rate; None: 0.05 for VGG trunks, 0.01 for ResNets (the paper's).
    momentum, weight_decay : float
    sigma : float
        Variance of the mixture components (the paper: 0.05).
    crop_scale : (float, float)
        Area fraction of the random crop.
    flip : bool
        Random horizontal flips (off for digits and characters).
    color_jitter : float
        Strength of brightness, contrast and saturation jitter (0: none).
    device : str
    random_state : int or None
        Seeds the targets, the initial permutation, the weights, batches and augmentation.
    checkpoint_dir : str or None
        Folder for ``last.pt``, written after every epoch; a later ``fit`` with the same
        settings and data resumes from it (and a finished run is only loaded).
    verbose : bool
        Log one line per epoch.

    Attributes
    ----------
    labels_ : int64 ndarray of shape (n,)
        Final clusters (after refinement when ``refine_epochs > 0``).
    labels_main_ : int64 ndarray of shape (n,)
        Clusters at the end of the main stage.
    loss_ : float
        Mean squared distance between the (unaugmented) outputs and their assigned targets
        at the end of the main stage: eq. 1, the criterion of the lowest-loss ensemble.
    outputs_ : float32 ndarray of shape (n, n_clusters)
        The final normalised outputs (the method's embedding).
    history_ : list of dict
        One row per epoch: stage (cluster / rotation / refine), loss, seconds.
    owner_ : int64 ndarray of shape (n,)
        The mixture sample (row of the targets) each image holds after the main stage.
    net_ : MMDCNet
    """

    def __init__(self, n_clusters: int, backbone: str = "mmdc_vgg3", backbone_kwargs: dict | None = None,
                 sobel: bool = True, repetitions: int = 3, rotation_task: bool = True, epochs: int = 50,
                 refine_epochs: int = 0, batch_size: int = 128, lr: float | None = None, momentum: float = 0.9,
                 weight_decay: float = 5e-4, sigma: float = 0.05, crop_scale=(0.6, 1.0), flip: bool = True,
                 color_jitter: float = 0.4, device: str = "cpu", random_state=None, checkpoint_dir: str | None = None,
                 verbose: bool = False):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.backbone_kwargs = backbone_kwargs
        self.sobel = sobel
        self.repetitions = repetitions
        self.rotation_task = rotation_task
        self.epochs = epochs
        self.refine_epochs = refine_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.sigma = sigma
        self.crop_scale = crop_scale
        self.flip = flip
        self.color_jitter = color_jitter
        self.device = device
        self.random_state = random_state
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    # settings that define a run; a checkpoint made with others is not resumed
    _RUN_KEYS = ("n_clusters", "backbone", "backbone_kwargs", "sobel", "repetitions", "rotation_task", "batch_size",
                 "lr", "momentum", "weight_decay", "sigma", "crop_scale", "flip", "color_jitter", "random_state")

    @property
    def loss_curve_(self) -> list[float]:
        """Mean clustering loss of every clustering epoch of the main stage."""
        return [h["loss"] for h in self.history_ if h["stage"] == "cluster"]

    def check_params(self) -> None:
        check_backbone(self.backbone, "mmdc_vgg3, mmdc_vgg4 or cifar_resnet20")
        check_int("n_clusters", self.n_clusters, 2)
        check_int("repetitions", self.repetitions, 1)
        check_int("epochs", self.epochs, 1)
        check_int("refine_epochs", self.refine_epochs, 0)
        check_int("batch_size", self.batch_size, 2)
        for name in ("lr", "sigma"):
            value = getattr(self, name)
            check_float(name, value, 0.0, optional=name == "lr")
            if value is not None and value <= 0:
                raise DeepclustError(f"{name}={value!r} must be a positive number")
        check_float("momentum", self.momentum, 0.0)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("color_jitter", self.color_jitter, 0.0)
        lo_hi = self.crop_scale
        if (not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi)
                or not 0 < lo_hi[0] <= lo_hi[1] <= 1):
            raise DeepclustError(f"crop_scale={lo_hi!r} must be two numbers 0 < low <= high <= 1, e.g. [0.6, 1.0]")

    def _settings(self) -> dict:
        out = {k: getattr(self, k) for k in self._RUN_KEYS}
        out["crop_scale"] = [float(v) for v in self.crop_scale]
        out["backbone_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in (self.backbone_kwargs or {}).items()}
        out["lr"] = self._lr()
        return out

    def _lr(self) -> float:
        return float(self.lr) if self.lr is not None else default_lr(self.backbone)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return sobel(x) if self.sobel else (x - 0.5) / 0.5

    def _build(self, in_chans: int) -> MMDCNet:
        return MMDCNet(build_trunk(self.backbone, in_chans, self.backbone_kwargs), self.n_clusters)

    def fit(self, images, y=None) -> "MMDC":
        """Train on ``images``: array or tensor of shape (n, C, H, W) or (n, H, W), values
        in [0, 1] or uint8. Resumes from ``checkpoint_dir`` when it holds this run.

        Under ``torchrun`` every rank trains on its share of each batch (DDP); the
        target each image holds is kept the same on every rank, rank 0 writes the
        checkpoints."""
        self.check_params()
        x_all = image_tensor(images)
        n = len(x_all)
        if n < self.n_clusters:
            raise DeepclustError(f"n_clusters={self.n_clusters} must be <= the number of images ({n})")
        if self.rotation_task and x_all.shape[-1] != x_all.shape[-2]:
            raise DeepclustError(f"the rotation task needs square images; got {tuple(x_all.shape[-2:])}: resize them")
        dist_info, device = init_distributed(torch.device(self.device))
        rank = dist_info.rank
        data_id = fingerprint(x_all)
        rng = as_generator(self.random_state)
        seed = int(rng.integers(2**31 - 1))
        torch.manual_seed(seed)
        net = self._build(2 if self.sobel else x_all.shape[1]).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=self._lr(), momentum=self.momentum, weight_decay=self.weight_decay)
        targets_np, _ = gmm_targets(n, self.n_clusters, self.sigma, rng)
        targets = torch.from_numpy(targets_np)
        owner = torch.from_numpy(rng.permutation(n))  # image i holds targets[owner[i]]
        gen = torch.Generator().manual_seed(seed)
        self.history_, self.loss_, self.labels_main_ = [], None, None
        refine_targets = None
        settings = self._settings()
        checkpoint = run_checkpoint(self.checkpoint_dir, CHECKPOINT_FORMAT, "MMDC")
        state = checkpoint.load(settings, data_id)
        if state is not None:
            owner, refine_targets = self._restore(state, net, optimizer, gen, checkpoint.path)
        start = len(self.history_)
        total = self.epochs + self.refine_epochs
        self._check_resume(start, total)
        def save() -> None:  # everything an exact resume needs, after every epoch and at the end
            checkpoint.save({
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(), "owner": owner, "generator": gen.get_state(),
                "history": self.history_, "loss": self.loss_, "labels_main": self.labels_main_,
                "refine_targets": refine_targets,
            }, settings, data_id)

        model = wrap_ddp(net, device, dist_info, find_unused_parameters=True)  # a step uses one of the two heads
        for epoch in range(start, total):
            t0 = time.perf_counter()
            if epoch == self.epochs:  # main stage finished: score it once
                self._score_main(net, x_all, targets, owner)
            refining = epoch >= self.epochs
            if refining:
                refine_targets = self._refinement_targets(self._outputs(net, x_all), epoch)
            stage = "refine" if refining else ("rotation" if self.rotation_task and epoch % 2 == 1 else "cluster")
            net.train()
            if dist_info.enabled:  # the same order on every rank, each rank its own augmentations
                order = torch.randperm(n, generator=torch.Generator().manual_seed(rank_seed(seed, epoch)))
                aug_gen = torch.Generator().manual_seed(rank_seed(seed, epoch, rank + 1))
            else:
                order, aug_gen = torch.randperm(n, generator=gen), gen
            losses = self._epoch(model, optimizer, x_all, order, aug_gen, stage, targets, owner, refine_targets,
                                 dist_info, device)
            average_buffers(net, dist_info)
            row = {"epoch": epoch + 1, "stage": stage, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
            self.history_.append(row)
            if self.verbose and dist_info.is_main:
                log.info("MMDC epoch %d/%d %s loss %.4f (%.0f s)", epoch + 1, total, stage, row["loss"], row["seconds"])
            if dist_info.is_main:
                save()
            barrier(dist_info)
        if self.loss_ is None:  # no refinement: the main stage ends here
            self._score_main(net, x_all, targets, owner)
            if dist_info.is_main:
                save()
            barrier(dist_info)
        self.net_ = net
        self.owner_ = owner.numpy()  # the target each image holds at the end of the main stage
        self.outputs_ = self._outputs(net, x_all).numpy()
        self.labels_ = nearest_mean(self.outputs_) if self.refine_epochs else self.labels_main_
        return self

    def _restore(self, state: dict, net, optimizer, gen: torch.Generator, path: str) -> tuple:
        """Take up a checkpoint's run: the weights, optimiser, random stream, history and
        end-of-main-stage scores are restored; returns (owner, refine_targets)."""
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        self.history_, self.loss_ = state["history"], state["loss"]
        main = state["labels_main"]  # saved as a tensor (checkpoints hold no numpy objects)
        self.labels_main_ = main.numpy() if isinstance(main, torch.Tensor) else main
        if len(self.history_) < self.epochs:  # a longer main stage than the checkpoint's: its end scores are stale
            self.loss_, self.labels_main_ = None, None
        if self.history_ and self.verbose:
            log.info("resuming MMDC from %s after epoch %d", path, len(self.history_))
        return state["owner"], state["refine_targets"]

    def _score_main(self, net: MMDCNet, x_all: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor) -> None:
        """The main stage's loss and clusters (each image's nearest mixture mean)."""
        outputs = self._outputs(net, x_all)
        self.loss_ = float((outputs - targets[owner]).pow(2).sum(1).mean())
        self.labels_main_ = nearest_mean(outputs)

    def _refinement_targets(self, outputs: torch.Tensor, epoch: int) -> torch.Tensor:
        """Refinement (section 3.5): k-means on the outputs, each k-means cluster matched
        to one mixture mean (Hungarian, on the centres' coordinates), every image pulled
        to the mean of its cluster; cluster sizes are free."""

        seed = None if self.random_state is None else int(self.random_state) * 1000 + epoch
        km = create_clusterer("kmeans", n_clusters=self.n_clusters, random_state=seed)
        labels = km.fit_predict(outputs.numpy())
        centres = np.stack([outputs.numpy()[labels == j].mean(0) if (labels == j).any() else np.zeros(self.n_clusters)
                            for j in range(self.n_clusters)])
        rows, cols = linear_sum_assignment(-centres)
        mean_of = np.empty(self.n_clusters, dtype=np.int64)
        mean_of[rows] = cols
        return torch.eye(self.n_clusters)[torch.from_numpy(mean_of[labels])]

    def _check_resume(self, start: int, total: int) -> None:
        """Refuse a checkpoint that cannot continue into the asked-for schedule."""
        if start > total:
            raise DeepclustError(f"the checkpoint in '{self.checkpoint_dir}' has {start} epochs, more than the "
                                 f"{total} asked for; ask for at least as many or use another checkpoint_dir")
        if start > self.epochs and self.labels_main_ is None:
            raise DeepclustError("inconsistent checkpoint: refinement without a finished main stage")
        if start < self.epochs and any(h["stage"] == "refine" for h in self.history_):
            raise DeepclustError(f"the checkpoint in '{self.checkpoint_dir}' was refined after {self.epochs} < "
                                 "its main-stage epochs; ask for its number of main epochs")

    def _epoch(self, model, optimizer, x_all, order, aug_gen, stage: str, targets, owner, refine_targets, dist_info,
               device) -> list[float]:
        """One pass over ``order`` in batches (this rank's share of each): the rotation task,
        target matching (``owner`` is updated in place, and agreed on by every rank), or
        refinement towards ``refine_targets``. Returns the batches' losses."""
        rank, world = dist_info.rank, dist_info.world_size
        bs, r = self.batch_size, self.repetitions
        aug = dict(scale=tuple(self.crop_scale), flip=self.flip, jitter=float(self.color_jitter))
        losses = []
        for s in range(0, len(order), bs):
            whole = order[s: s + bs]
            if len(whole) // world < 2:  # the same decision on every rank
                continue
            idx = whole[rank::world]  # this rank's share of the batch
            batch = x_all[idx]
            if stage == "rotation":
                rotated, rot_labels = rotations(augment(batch, aug_gen, **aug))
                loss = F.cross_entropy(model(self._inputs(rotated).to(device), rotation=True), rot_labels.to(device))
            else:
                views = torch.cat([augment(batch, aug_gen, **aug) for _ in range(r)])
                out = model(self._inputs(views.to(device))).view(r, len(idx), -1)
                if stage == "cluster":
                    # the repetitions of an image share its target: match on their mean direction
                    new = reassign_targets(F.normalize(out.mean(0), dim=1), targets[owner[idx]].to(device))
                    owner[idx] = owner[idx][new.cpu()]
                    if dist_info.enabled:  # every rank learns the other shares' new owners
                        shares = torch.zeros(len(whole), dtype=owner.dtype)
                        shares[rank::world] = owner[idx]
                        dist.all_reduce(shares)
                        owner[whole] = shares
                    goal = targets[owner[idx]]
                else:
                    goal = refine_targets[idx]
                loss = (out - goal.to(device).unsqueeze(0)).pow(2).sum(-1).mean()
            losses.append(float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return losses

    @torch.no_grad()
    def _outputs(self, net: MMDCNet, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        net.eval()
        device = next(net.parameters()).device
        outs = [net(self._inputs(x[s: s + batch].to(device))).cpu() for s in range(0, len(x), batch)]
        return torch.cat(outs)

    def transform(self, images) -> np.ndarray:
        """The normalised K-dimensional outputs of ``images`` (the method's embedding)."""
        if not hasattr(self, "net_"):
            raise DeepclustError("this MMDC is not fitted yet; call fit first")
        return self._outputs(self.net_, image_tensor(images)).numpy()

    def predict(self, images) -> np.ndarray:
        """Cluster of each image: the nearest mixture mean of its output (eq. 3)."""
        return nearest_mean(self.transform(images))

    def fit_predict(self, images, y=None) -> np.ndarray:
        return self.fit(images).labels_


class MMDCTraining(EndToEndTraining):
    """``deepclust train --method mmdc``: train ``config.runs`` seeded MMDC networks on a
    folder of images (or a benchmark array), combine them, and write a run folder with
    the same files as ``deepclust cluster`` plus ``history.csv`` and one checkpoint
    folder ``seedN/`` per run, from which it resumes (see
    :class:`~deepclust.methods.end_to_end.EndToEndTraining`). Runs are scored at the end
    of the main stage and, with ``refine_epochs``, after refinement; the embedding is the
    K-dimensional output and the distance is to the nearest mixture mean (eq. 3).
    """

    name = "mmdc"

    estimator_class = MMDC

    def stages(self, est: MMDC) -> dict[str, np.ndarray]:
        return {"main": est.labels_main_, **({"refined": est.labels_} if est.refine_epochs else {})}

    def distances(self, est: MMDC, labels: np.ndarray) -> np.ndarray:
        outputs = est.outputs_
        return np.sqrt(np.maximum(2 - 2 * outputs[np.arange(len(labels)), labels], 0))

    def resolved(self) -> dict:
        return {"lr": self.estimator(0)._lr()}

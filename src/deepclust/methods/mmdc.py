"""Multi-Modal Deep Clustering (MMDC): the pieces of the algorithm, as plain functions.

Shiran and Weinshall, "Multi-Modal Deep Clustering: Unsupervised Partitioning of
Images", ICPR 2020. A network is trained, end to end, to map every image onto a target
point drawn once from a mixture of K Gaussians projected onto the unit sphere; the
targets of each mini-batch are re-assigned among its images with the Hungarian method
before every SGD step (eq. 1), and the cluster of an image is the nearest mixture mean
(eq. 3). Ensembles of seeded runs are combined by the lowest loss or by a majority vote
after aligning every run's labels to the lowest-loss run.

This module holds the parts that are pure maths: the target sampler, the per-batch
re-assignment, the cluster rule and the ensemble vote. The training loop follows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from deepclust.cluster._base import as_generator, check_int
from deepclust.errors import DeepclustError


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


def align_labels(reference: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Rename the clusters of ``labels`` to agree most with ``reference`` (Hungarian method).

    Both are integer arrays of shape (n,) with values in ``0 .. n_clusters-1``.
    """
    reference, labels = np.asarray(reference), np.asarray(labels)
    overlap = np.zeros((n_clusters, n_clusters), dtype=np.int64)
    np.add.at(overlap, (labels, reference), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.arange(n_clusters)
    mapping[rows] = cols
    return mapping[labels]


def majority_vote(labelings: list[np.ndarray] | np.ndarray, reference: int, n_clusters: int) -> np.ndarray:
    """Combine the labelings of an ensemble: align each to ``labelings[reference]`` (the
    lowest-loss run), then take each image's most frequent label; ties go to the reference.

    Parameters
    ----------
    labelings : sequence of int arrays of shape (n,), or an array (runs, n)
    reference : int
        Index of the run the others are aligned to.
    n_clusters : int

    Returns
    -------
    int64 ndarray of shape (n,)
    """
    labelings = np.asarray(labelings)
    ref = labelings[reference]
    aligned = np.stack([ref if i == reference else align_labels(ref, lab, n_clusters)
                        for i, lab in enumerate(labelings)])
    votes = np.zeros((labelings.shape[1], n_clusters), dtype=np.int64)
    for run in aligned:
        votes[np.arange(len(run)), run] += 1
    # doubled counts plus one for the reference's label: majorities unchanged, ties go to the reference
    score = 2 * votes
    score[np.arange(len(ref)), ref] += 1
    return np.argmax(score, axis=1).astype(np.int64)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.cluster_head(self.trunk(x)), dim=1)

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.rotation_head(self.trunk(x))


def _random_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = False) -> torch.Tensor:
    """A per-image random translation (pad and crop back) and, optionally, horizontal flip."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(b)])
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


class MMDC:
    """Multi-Modal Deep Clustering (Shiran and Weinshall, 2020): see the module docstring.

    A first, single-run version: GMM targets on the sphere, the per-batch Hungarian
    re-assignment, ``repetitions`` augmented copies of each image pulled to its one target
    (eq. 1), RotNet epochs alternating with clustering epochs, Sobel input, and clusters
    by the nearest mixture mean (eq. 3). Augmentation here is a random translation (and
    an optional flip) on tensors. Not yet here: refinement, ensembles, checkpoints.

    Parameters
    ----------
    n_clusters : int
    backbone : str
        A timm name of the trunk (``mmdc_vgg3``, ``mmdc_vgg4``, ``conv4``, a ResNet ...).
    sobel : bool
        Feed Sobel gradients (2 channels) instead of the image.
    repetitions : int
        Augmented copies of every image per clustering step (the paper: 3).
    rotation_task : bool
        Alternate clustering epochs with RotNet epochs.
    epochs, batch_size, lr, momentum, weight_decay, sigma
    flip : bool
        Random horizontal flips (not for digits or characters).
    device : str
    random_state : int or None

    Attributes
    ----------
    labels_ : int64 ndarray of shape (n,)
    net_ : MMDCNet
    loss_curve_ : list of float
        Mean clustering loss of every clustering epoch.
    """

    def __init__(self, n_clusters: int, backbone: str = "mmdc_vgg3", sobel: bool = True, repetitions: int = 3,
                 rotation_task: bool = True, epochs: int = 50, batch_size: int = 128, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 5e-4, sigma: float = 0.05, flip: bool = False,
                 device: str = "cpu", random_state=None):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.sobel = sobel
        self.repetitions = repetitions
        self.rotation_task = rotation_task
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.sigma = sigma
        self.flip = flip
        self.device = device
        self.random_state = random_state

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        from deepclust.data.transforms import sobel

        return sobel(x) if self.sobel else x

    def fit(self, images) -> "MMDC":
        """Train on ``images`` (array or tensor of shape (n, C, H, W), values in [0, 1])."""
        import timm

        from deepclust.data.transforms import rotations

        x_all = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x_all.ndim != 4:
            raise DeepclustError(f"images must have shape (n, C, H, W); got {tuple(x_all.shape)}")
        for name, minimum in (("repetitions", 1), ("epochs", 1), ("batch_size", 2)):
            check_int(name, getattr(self, name), minimum)
        n = len(x_all)
        if n < self.n_clusters:
            raise DeepclustError(f"n_clusters={self.n_clusters} must be <= the number of images ({n})")
        rng = as_generator(self.random_state)
        seed = int(rng.integers(2**31 - 1))
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        device = torch.device(self.device)
        in_chans = 2 if self.sobel else x_all.shape[1]
        net = MMDCNet(timm.create_model(self.backbone, pretrained=False, num_classes=0, in_chans=in_chans),
                      self.n_clusters).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        targets_np, _ = gmm_targets(n, self.n_clusters, self.sigma, rng)
        targets = torch.from_numpy(targets_np).to(device)
        owner = torch.from_numpy(rng.permutation(n))  # image i holds targets[owner[i]]
        self.loss_curve_ = []
        for epoch in range(self.epochs):
            net.train()
            rotation_epoch = self.rotation_task and epoch % 2 == 1
            order = torch.randperm(n, generator=gen)
            losses = []
            for s in range(0, n, self.batch_size):
                idx = order[s: s + self.batch_size]
                if len(idx) < 2:
                    continue
                batch = x_all[idx]
                if rotation_epoch:
                    rotated, rot_labels = rotations(_random_crop_flip(batch, gen, flip=self.flip))
                    loss = F.cross_entropy(net.rotation_logits(self._inputs(rotated).to(device)), rot_labels.to(device))
                else:
                    views = torch.cat([_random_crop_flip(batch, gen, flip=self.flip) for _ in range(self.repetitions)])
                    out = net(self._inputs(views).to(device)).view(self.repetitions, len(idx), -1)
                    # the repetitions of an image share its target: match on their mean direction
                    new = reassign_targets(F.normalize(out.mean(0), dim=1), targets[owner[idx]])
                    owner[idx] = owner[idx][new.cpu()]
                    loss = (out - targets[owner[idx]].unsqueeze(0)).pow(2).sum(-1).mean()
                    losses.append(float(loss.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if losses:
                self.loss_curve_.append(float(np.mean(losses)))
        self.net_ = net
        self.labels_ = self.predict(x_all)
        return self

    @torch.no_grad()
    def predict(self, images) -> np.ndarray:
        """Cluster of each image: the nearest mixture mean of its output (eq. 3)."""
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        self.net_.eval()
        device = next(self.net_.parameters()).device
        outs = [self.net_(self._inputs(x[s: s + 256]).to(device)) for s in range(0, len(x), 256)]
        return nearest_mean(torch.cat(outs))

    def fit_predict(self, images) -> np.ndarray:
        return self.fit(images).labels_

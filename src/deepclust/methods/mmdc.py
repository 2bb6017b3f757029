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
from scipy.optimize import linear_sum_assignment

from deepclust.cluster._base import as_generator
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
    for name, value, minimum in (("n", n, 1), ("n_clusters", n_clusters, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise DeepclustError(f"{name}={value!r} must be an integer >= {minimum}")
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

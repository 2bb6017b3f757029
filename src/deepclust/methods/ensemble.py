"""Combining seeded runs of a clustering method: MMDC's two ensembles (Shiran and
Weinshall, 2021, section 4.2), used by every end-to-end method's run folder."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from deepclust.errors import DeepclustError


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


def combine_runs(labelings, losses, n_clusters: int) -> dict[str, np.ndarray]:
    """The paper's two ensembles of seeded runs (section 4.2).

    Parameters
    ----------
    labelings : sequence of int arrays of shape (n,)
        The clusters of every run, on the same images.
    losses : sequence of float
        Every run's final loss (:attr:`MMDC.loss_`).
    n_clusters : int

    Returns
    -------
    dict with ``lowest_loss`` (the labels of the run with the smallest loss) and
    ``majority`` (each image's most frequent label after aligning every run to the
    lowest-loss run with the Hungarian method), and ``reference`` (that run's index).
    """
    losses = np.asarray(losses, dtype=float)
    if len(losses) != len(labelings) or len(losses) == 0:
        raise DeepclustError(f"need one loss per run; got {len(losses)} losses for {len(labelings)} runs")
    best = int(np.argmin(losses))
    return {"lowest_loss": np.asarray(labelings[best], dtype=np.int64),
            "majority": majority_vote(labelings, best, n_clusters), "reference": best}

"""A chosen number of clusters and the curve it was chosen from; the eigengap of a spectrum.

Kept apart from :mod:`deepclust.cluster.k_estimation` (which clusters to score each k) so
that a clusterer estimating its own k, as spectral clustering does, can use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KEstimate:
    """A chosen number of clusters and the curve it was chosen from.

    Attributes
    ----------
    n_clusters : int
    method : str
    ks : ndarray of shape (m,)
        Candidate numbers of clusters.
    scores : ndarray of shape (m,)
        The criterion for each candidate (larger is better): the eigengap
        ``lambda_k - lambda_{k+1}``, the mean silhouette, or the learned metric's score.
    """

    n_clusters: int
    method: str
    ks: np.ndarray
    scores: np.ndarray

    def curve(self) -> list[dict]:
        """``[{"k": k, "score": s}, ...]``, ready for JSON or CSV."""
        return [{"k": int(k), "score": float(s)} for k, s in zip(self.ks, self.scores)]

    def to_dict(self) -> dict:
        return {"n_clusters": int(self.n_clusters), "method": self.method, "curve": self.curve()}


def eigengap(values, k_min: int = 2, k_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaps ``values[k-1] - values[k]`` for k in ``k_min..k_max`` of descending eigenvalues.

    Parameters
    ----------
    values : array of shape (m,)
        Largest eigenvalues of the normalised affinity, descending (k_max < m).

    Returns
    -------
    ks : ndarray of shape (k_max - k_min + 1,)
    gaps : ndarray of the same shape
    """
    values = np.asarray(values, dtype=np.float64)
    k_max = len(values) - 1 if k_max is None else min(k_max, len(values) - 1)
    ks = np.arange(k_min, k_max + 1)
    return ks, values[ks - 1] - values[ks]

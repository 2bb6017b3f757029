"""A chosen number of clusters and the curve it was chosen from; the eigengap of a spectrum.

Kept apart from :mod:`deepclust.cluster.k_estimation` (which clusters to score each k) so
that a clusterer estimating its own k, as spectral clustering does, can use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A k scoring within this fraction of the curve's range of the best counts as a near tie.
NEAR_TIE = 0.05
#: A near tie this far from the chosen k (as a fraction of it) makes the choice weak.
WEAK_DISTANCE = 0.25


def near_tie(scores, chosen: float, fraction: float = NEAR_TIE) -> np.ndarray:
    """Which ``scores`` are finite and at least ``chosen`` minus ``fraction`` of the range
    of the finite scores: the ones a criterion barely tells apart from ``chosen``."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return finite
    margin = fraction * (scores[finite].max() - scores[finite].min())
    return finite & (np.where(finite, scores, -np.inf) >= chosen - margin)


def far_apart(k: int, chosen: int) -> bool:
    """Whether a near tie at ``k`` lies far enough from the ``chosen`` k to make it weak."""
    return abs(k - chosen) >= WEAK_DISTANCE * chosen


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

    def near_ties(self, fraction: float = NEAR_TIE) -> list[int]:
        """The other ks scoring within ``fraction`` of the curve's range of the chosen k's
        score, best first: the runner-ups a flat curve barely tells apart."""
        scores, ks = np.asarray(self.scores, dtype=np.float64), np.asarray(self.ks).tolist()
        if np.isfinite(scores).sum() < 2 or self.n_clusters not in ks:
            return []
        near = near_tie(scores, scores[ks.index(self.n_clusters)], fraction)
        return [k for _, k in sorted(((s, int(k)) for k, s, tie in zip(ks, scores, near) if tie and k != self.n_clusters),
                                     reverse=True)]

    def weak(self) -> bool:
        """Whether a near tie lies at least ``WEAK_DISTANCE`` (25%) away from the chosen k."""
        return any(far_apart(k, self.n_clusters) for k in self.near_ties())

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

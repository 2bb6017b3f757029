"""A chosen number of clusters and the curve it was chosen from; the eigengap of a spectrum.

Kept apart from :mod:`deepclust.cluster.k_estimation` (which clusters to score each k) so
that a clusterer estimating its own k, as spectral clustering does, can use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A k scoring within this fraction of the curve's range of the best counts as a near tie.
NEAR_TIE = 0.05


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
        scores = np.asarray(self.scores, dtype=np.float64)
        finite = np.isfinite(scores)
        if finite.sum() < 2 or self.n_clusters not in set(np.asarray(self.ks).tolist()):
            return []
        chosen = float(scores[list(np.asarray(self.ks)).index(self.n_clusters)])
        margin = fraction * (scores[finite].max() - scores[finite].min())
        near = [(s, int(k)) for k, s in zip(self.ks, scores) if np.isfinite(s) and k != self.n_clusters
                and s >= chosen - margin]
        return [k for _, k in sorted(near, reverse=True)]

    def weak(self) -> bool:
        """Whether a near tie lies at least 25% away from the chosen k."""
        return any(abs(k - self.n_clusters) >= 0.25 * self.n_clusters for k in self.near_ties())

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

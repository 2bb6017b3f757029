"""Small synthetic 2-D clustering problems: the four families of the C2M paper's Table 2.

``blobs`` (isotropic Gaussian clusters), ``aniso`` (the same blobs under a shearing linear
map), ``moons`` (two interleaved half circles) and ``circles`` (two concentric rings), built
with scikit-learn's generators. Blob-type sets draw their number of clusters uniformly from
2 to ``max_clusters``; moons and circles always have 2.

The paper does not say how far apart its blobs are. With centres anywhere in the box
(``min_separation=0``, scikit-learn's way), some centres nearly coincide: even the
true centres then mislabel points (:func:`nearest_centre_accuracy`, about 0.96 ACC on
average), below the paper's reported 0.984. ``min_separation`` draws the centres again
until every two are that many cluster standard deviations apart.

scikit-learn gives every cluster the same number of points. ``size_alpha`` draws the
blob-type clusters' shares from a symmetric Dirichlet distribution instead (1: any split
as likely as any other; smaller: more uneven), each cluster keeping at least
``MIN_CLUSTER_SIZE`` points: to measure what a metric that learned even sizes costs where
they are not.
"""

from __future__ import annotations

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.metrics import score_clustering

KINDS = ("blobs", "aniso", "moons", "circles")
SHEAR = np.array([[0.6, -0.6], [-0.4, 0.8]])  # scikit-learn's anisotropic example
MIN_CLUSTER_SIZE = 5  # with size_alpha: the fewest points a cluster gets


def synthetic_clusters(kind: str, n_samples: int = 200, max_clusters: int = 9, random_state: int | None = None,
                       min_separation: float = 0.0, return_centers: bool = False, size_alpha: float | None = None):
    """One labelled dataset ``(X, y)`` of the family ``kind``: X (n_samples, 2), y 0..k-1.

    ``min_separation``: blob-type families only, the least distance between two centres in
    cluster standard deviations (0: anywhere in the box). ``return_centers``: also return
    the generating centres, mapped like X (None for moons and circles). ``size_alpha``:
    blob-type families only, the clusters' shares drawn from Dirichlet(``size_alpha``), each
    cluster at least ``MIN_CLUSTER_SIZE`` points (None: equal sizes, scikit-learn's way;
    the same seed then gives the same data as without it)."""
    from sklearn.datasets import make_blobs, make_circles, make_moons

    if kind not in KINDS:
        raise DeepclustError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if isinstance(min_separation, bool) or not isinstance(min_separation, (int, float)) or not 0 <= min_separation <= 6:
        raise DeepclustError(f"min_separation={min_separation!r} must be a number from 0 to 6 (cluster standard "
                             "deviations between centres)")
    if max_clusters < 2 or n_samples < max_clusters:
        raise DeepclustError(f"need max_clusters >= 2 and n_samples >= max_clusters; got {max_clusters}, {n_samples}")
    if size_alpha is not None and (isinstance(size_alpha, bool) or not isinstance(size_alpha, (int, float))
                                   or not size_alpha > 0):
        raise DeepclustError(f"size_alpha={size_alpha!r} must be a number > 0 (1: any split of the points as likely "
                             "as any other), or None for clusters of one size")
    if size_alpha is not None and n_samples < MIN_CLUSTER_SIZE * max_clusters:
        raise DeepclustError(f"size_alpha needs n_samples >= {MIN_CLUSTER_SIZE} * max_clusters = "
                             f"{MIN_CLUSTER_SIZE * max_clusters}; got {n_samples}")
    rng = np.random.default_rng(random_state)
    seed = int(rng.integers(2**31 - 1))
    if kind in ("blobs", "aniso"):
        k = int(rng.integers(2, max_clusters + 1))
        std = float(rng.uniform(0.5, 1.0))
        centers, sizes = k, n_samples
        if min_separation > 0 or size_alpha is not None:  # our own centres: make_blobs takes a count only with one size
            while True:  # rejection sampling: the first draw when the centres may lie anywhere
                centers = rng.uniform(-10, 10, size=(k, 2))
                gaps = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
                if min_separation <= 0 or gaps[np.triu_indices(k, 1)].min() >= min_separation * std:
                    break
        if size_alpha is not None:  # every cluster its minimum, the rest split by Dirichlet shares
            shares = rng.dirichlet([size_alpha] * k)
            sizes = [int(c) for c in MIN_CLUSTER_SIZE + rng.multinomial(n_samples - MIN_CLUSTER_SIZE * k, shares)]
        X, y, centers = make_blobs(sizes, centers=centers, cluster_std=std, center_box=(-10, 10),
                                   random_state=seed, return_centers=True)
        if kind == "aniso":
            X, centers = X @ SHEAR, centers @ SHEAR
    elif kind == "moons":
        X, y = make_moons(n_samples, noise=0.05, random_state=seed)
        centers = None
    else:
        X, y = make_circles(n_samples, noise=0.05, factor=0.5, random_state=seed)
        centers = None
    X, y = X.astype(np.float32), y.astype(np.int64)
    return (X, y, centers) if return_centers else (X, y)


def nearest_centre_accuracy(X: np.ndarray, y: np.ndarray, centers: np.ndarray, kind: str) -> float:
    """ACC of labelling each point by its most likely generating centre: the best any
    clustering can do on average on blob-type sets (equal spherical Gaussians; for
    ``aniso`` the distances are taken before the shear)."""

    if kind == "aniso":
        inverse = np.linalg.inv(SHEAR)
        X, centers = X @ inverse, centers @ inverse
    nearest = np.linalg.norm(X[:, None] - centers[None], axis=-1).argmin(1)
    return float(score_clustering(y, nearest)["ACC"])


def synthetic_collection(kind: str, count: int, n_samples: int = 200, max_clusters: int = 9,
                         random_state: int | None = None, min_separation: float = 0.0,
                         return_centers: bool = False, size_alpha: float | None = None) -> list[tuple]:
    """``count`` independent datasets of one family (see :func:`synthetic_clusters`)."""
    seeds = np.random.default_rng(random_state).integers(2**31 - 1, size=count)
    return [synthetic_clusters(kind, n_samples, max_clusters, int(s), min_separation, return_centers, size_alpha)
            for s in seeds]

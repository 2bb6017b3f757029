"""Small synthetic 2-D clustering problems: the four families of the C2M paper's Table 2.

``blobs`` (isotropic Gaussian clusters), ``aniso`` (the same blobs under a shearing linear
map), ``moons`` (two interleaved half circles) and ``circles`` (two concentric rings), built
with scikit-learn's generators. Blob-type sets draw their number of clusters uniformly from
2 to ``max_clusters``; moons and circles always have 2.
"""

from __future__ import annotations

import numpy as np

from deepclust.errors import DeepclustError

KINDS = ("blobs", "aniso", "moons", "circles")
SHEAR = np.array([[0.6, -0.6], [-0.4, 0.8]])  # scikit-learn's anisotropic example


def synthetic_clusters(kind: str, n_samples: int = 200, max_clusters: int = 9,
                       random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One labelled dataset ``(X, y)`` of the family ``kind``: X (n_samples, 2), y 0..k-1."""
    from sklearn.datasets import make_blobs, make_circles, make_moons

    if kind not in KINDS:
        raise DeepclustError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if max_clusters < 2 or n_samples < max_clusters:
        raise DeepclustError(f"need max_clusters >= 2 and n_samples >= max_clusters; got {max_clusters}, {n_samples}")
    rng = np.random.default_rng(random_state)
    seed = int(rng.integers(2**31 - 1))
    if kind in ("blobs", "aniso"):
        k = int(rng.integers(2, max_clusters + 1))
        X, y = make_blobs(n_samples, centers=k, cluster_std=float(rng.uniform(0.5, 1.0)), center_box=(-10, 10),
                          random_state=seed)
        if kind == "aniso":
            X = X @ SHEAR
    elif kind == "moons":
        X, y = make_moons(n_samples, noise=0.05, random_state=seed)
    else:
        X, y = make_circles(n_samples, noise=0.05, factor=0.5, random_state=seed)
    return X.astype(np.float32), y.astype(np.int64)


def synthetic_collection(kind: str, count: int, n_samples: int = 200, max_clusters: int = 9,
                         random_state: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` independent datasets of one family (see :func:`synthetic_clusters`)."""
    seeds = np.random.default_rng(random_state).integers(2**31 - 1, size=count)
    return [synthetic_clusters(kind, n_samples, max_clusters, int(s)) for s in seeds]

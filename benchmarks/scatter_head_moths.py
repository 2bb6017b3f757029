"""The linear scatter head on EU moths, and two cheap things beside it, each on its own.

Fitted on the 100 training species' Lite0 embeddings, applied to the 50 test species,
clustered with k = 50 (5 seeds) against the raw embeddings:

- the head in closed form (``ScatterHead()``) and trained by gradient on episodes of 20
  species x 11 images (``solver="episodes"``: eq. 1 as the paper trains it);
- flip averaging: each image embedded as the mean of it and its mirror image;
- Spectral's ``n_neighbors`` chosen on the 50 validation species (ARI, 3 seeds) instead of
  the default 10.

    python benchmarks/scatter_head_moths.py [--cache runs/benchmark-cache] [--seeds 5]

Prints ARI AVG (SD) per space and algorithm, and the fit times.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deepclust.cluster.space import make_clusterer, prepare_features
from deepclust.data import load_split
from deepclust.methods.scatter_head import ScatterHead
from deepclust.metrics import adjusted_rand
from moths import CACHE, moth_embeddings

NEIGHBOURS = (5, 10, 15, 20, 30)


def aris(algorithm: str, Z: np.ndarray, y: np.ndarray, seeds: int, **params) -> list[float]:
    k = len(np.unique(y))
    return [adjusted_rand(y, make_clusterer(algorithm, k, s, params or None).fit_predict(Z)) for s in range(seeds)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=CACHE)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    split = load_split("eu-moths")
    spaces, seconds = {}, {}
    for flip in (False, True):
        t = time.perf_counter()
        vectors, folders, _ = moth_embeddings(args.cache, flip=flip)
        seconds["embed" + (" flip-averaged" if flip else "")] = time.perf_counter() - t
        part = {s: np.isin(folders, split.subsets[s]) for s in ("train", "val", "test")}
        X = {s: prepare_features(vectors[m], True) for s, m in part.items()}
        y = {s: folders[m] for s, m in part.items()}
        tag = " + flip" if flip else ""
        spaces["raw" + tag] = (X["val"], X["test"])
        solvers = {"head": ScatterHead()}
        if not flip:
            solvers["head (episodes)"] = ScatterHead(solver="episodes", random_state=0)
        for name, head in solvers.items():
            t = time.perf_counter()
            head.fit(X["train"], y["train"])
            seconds[name + tag] = time.perf_counter() - t
            spaces[name + tag] = tuple(prepare_features(head.transform(X[s]), True) for s in ("val", "test"))
    y_val, y_test = y["val"], y["test"]

    print(f"{'space':22s} {'k-means ARI':>15s} {'spectral ARI':>15s} {'spectral, n_neighbors on val':>30s}")
    for name, (Z_val, Z_test) in spaces.items():
        km = aris("kmeans", Z_test, y_test, args.seeds)
        sp = aris("spectral", Z_test, y_test, args.seeds)
        on_val = {n: np.mean(aris("spectral", Z_val, y_val, 3, n_neighbors=n)) for n in NEIGHBOURS}
        chosen = max(on_val, key=on_val.get)
        sp_chosen = aris("spectral", Z_test, y_test, args.seeds, n_neighbors=chosen)
        print(f"{name:22s} {np.mean(km):8.3f} ({np.std(km, ddof=1):.3f}) {np.mean(sp):8.3f} ({np.std(sp, ddof=1):.3f}) "
              f"{np.mean(sp_chosen):14.3f} ({np.std(sp_chosen, ddof=1):.3f}) n={chosen}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

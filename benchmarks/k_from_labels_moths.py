"""k from the labels a user has (Generalized Category Discovery's choice) on EU moths: the 100
training species labelled, all 200 species clustered; prints the k found against 200.

    python benchmarks/k_from_labels_moths.py [--cache runs/benchmark-cache] [--k-min 50] [--k-max 400]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deepclust.cluster.k_estimation import estimate_n_clusters
from deepclust.cluster.space import prepare_features
from deepclust.data import load_split
from moths import CACHE, moth_embeddings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=CACHE)
    parser.add_argument("--k-min", type=int, default=50)
    parser.add_argument("--k-max", type=int, default=400)
    args = parser.parse_args(argv)
    vectors, y, _ = moth_embeddings(args.cache)
    y = y.astype(object)
    train = set(load_split("eu-moths").classes("train"))
    labels = np.array([c if c in train else None for c in y], dtype=object)
    t = time.perf_counter()
    est = estimate_n_clusters(prepare_features(vectors, True), method="labels", labels=labels, k_min=args.k_min,
                              k_max=args.k_max, random_state=0)
    print(f"{int((labels != None).sum())} images of {len(train)} species labelled, {len(y)} images of "  # noqa: E711
          f"{len(set(y))} species clustered: k = {est.n_clusters} (truth {len(set(y))}), "
          f"{len(est.ks)} clusterings in {time.perf_counter() - t:.0f} s")
    print("  ".join(f"{k}:{s:.3f}" for k, s in zip(est.ks, est.scores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

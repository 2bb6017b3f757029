"""Does a run's confidence say which clusters and images to trust? EU moths, all 200 species.

Clusters the 2,205 Lite0 embeddings (k = 200, k-means and spectral) and compares the
confidence deepclust writes (assignments.csv's margin to the nearest other centre,
clusters.csv's median of it) with the truth:

- per cluster: the Spearman correlation between its confidence and its purity (the share of
  its images of its most common species);
- per image: the purity of the most and of the least confident half of the images (an image
  counts as right when its species is its cluster's most common one).

    python benchmarks/confidence_moths.py [--cache runs/benchmark-cache] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import spearmanr

from deepclust.cluster.space import centre_margins, make_clusterer, prepare_features
from moths import CACHE, moth_embeddings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=CACHE)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    vectors, y, _ = moth_embeddings(args.cache)
    X = prepare_features(vectors, True)
    k = len(np.unique(y))
    print(f"{len(y)} images, {k} species; per seed: Spearman(cluster confidence, purity), purity of the most / "
          "least confident half of the images")
    for algorithm in ("kmeans", "spectral"):
        rhos, tops, bottoms = [], [], []
        for seed in range(args.seeds):
            clusters = make_clusterer(algorithm, k, seed).fit_predict(X)
            margins = centre_margins(X, clusters)
            right = np.zeros(len(y), bool)
            confidence, purity = [], []
            for c in np.unique(clusters):
                members = np.flatnonzero(clusters == c)
                species, counts = np.unique(y[members], return_counts=True)
                right[members] = y[members] == species[np.argmax(counts)]
                confidence.append(np.median(margins[members]))
                purity.append(counts.max() / len(members))
            rhos.append(spearmanr(confidence, purity).statistic)
            order = np.argsort(-margins)
            half = len(order) // 2
            tops.append(right[order[:half]].mean())
            bottoms.append(right[order[half:]].mean())
        print(f"{algorithm:9s} Spearman {np.mean(rhos):.3f} ({np.std(rhos):.3f})   most confident half "
              f"{np.mean(tops):.3f}, least {np.mean(bottoms):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

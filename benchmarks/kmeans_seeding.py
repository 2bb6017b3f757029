"""Where k-means' ARI goes on the real-shaped generator: the seeding or the Lloyd iterations.

For each seed: scikit-learn's k-means++ on all rows (what ``KMeans()`` does first, timed)
followed by deepclust's Lloyd, against deepclust's own k-means++ on its 64-rows-per-centre
sample and on all rows, each followed by the same Lloyd. If Lloyd from scikit-learn's
centres reaches scikit-learn's ARI, the engine agrees with it and any difference is the
seeding; if seeding on all rows is no better on average than on the sample, the difference
is the draw of the seeds.

    python benchmarks/kmeans_seeding.py --seeds 3      # ~8 min idle on 2 cores at 200,000 rows
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from clustering import lowdim_blobs
from deepclust.cluster._lloyd import kmeans_plusplus, lloyd
from deepclust.cluster.kmeans import KMeans
from deepclust.validation import as_generator


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    from sklearn.cluster import kmeans_plusplus as sklearn_plusplus
    from sklearn.metrics import adjusted_rand_score
    from sklearn.utils import check_random_state

    torch.set_num_threads(2)
    X, y = lowdim_blobs(args.n, seed=0)
    Xt = torch.from_numpy(X)
    k = 160
    sample = KMeans(n_clusters=k)._init_size(args.n, k)
    ways = ("scikit-learn's seeding on all rows", f"deepclust's seeding on {sample:,} rows", "deepclust's seeding on all rows")
    results: dict[str, list[tuple[float, float]]] = {w: [] for w in ways}
    print(f"n={args.n:,}, d=1024, k={k}; each seeding followed by deepclust's Lloyd (label_tol 2e-3)")
    for seed in range(args.seeds):
        for way in ways:
            t = time.perf_counter()
            if way == ways[0]:  # the centres KMeans(random_state=seed) starts from
                centres = torch.from_numpy(sklearn_plusplus(X, k, random_state=check_random_state(seed))[0])
            else:
                centres = kmeans_plusplus(Xt, k, as_generator(seed), sample_size=sample if way == ways[1] else None)
            seeding = time.perf_counter() - t
            result = lloyd(Xt, centres, 300, 1e-4, 2e-3)
            ari = adjusted_rand_score(y, result.labels.numpy())
            results[way].append((ari, result.inertia))
            print(f"  seed {seed}  {way:<40} seeding {seeding:6.1f} s  ARI {ari:.4f}  inertia {result.inertia:,.1f}",
                  flush=True)
    for way, rows in results.items():
        print(f"  mean over {args.seeds} seeds: {way}: ARI {np.mean([a for a, _ in rows]):.4f}, "
              f"inertia {np.mean([i for _, i in rows]):,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

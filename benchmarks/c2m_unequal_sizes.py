"""What C2M's ``balance`` feature costs where clusters are not of one size.

scikit-learn's blobs, moons and rings give every cluster the same number of points, and the
``transferable`` preset's ``balance`` feature (``1 - entropy / log k`` of the cluster sizes)
lets a metric learn that. This trains three ``transferable`` metrics (standard training:
20 labelled blob sets, 10 epochs; blob centres 4 stds apart, as in
``configs/c2m-synthetic-separated.yaml``):

* on blobs of one size, without ``balance``;
* on blobs of one size, with it (the preset);
* on blobs of uneven sizes (Dirichlet(``--alpha``) shares), with it;

then clusters ``--test-sets`` blob sets of uneven sizes with each (k unknown, up to 9) and
prints their mean ACC, the share of sets where k was found, and the critic's learned
weight on ``balance``. The metrics are written to ``--out`` and reused by a second run.

    python benchmarks/c2m_unequal_sizes.py [--alpha 1.0] [--test-sets 40] [--jobs 2] [--out runs/c2m-unequal]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Pool

import numpy as np

SEPARATION, MAX_CLUSTERS = 4.0, 9


def cluster_one(job):
    """(ACC, whether k was found) of one test set with a saved metric."""
    import torch

    from deepclust.data.synthetic import synthetic_collection
    from deepclust.cluster.c2m import C2M
    from deepclust.metrics import score_clustering

    torch.set_num_threads(1)
    path, alpha, count, index = job
    X, y = synthetic_collection("blobs", count, max_clusters=MAX_CLUSTERS, random_state=30_000,
                                min_separation=SEPARATION, size_alpha=alpha)[index]
    metric = C2M.load(path).seed_search(index)
    found = metric.fit_predict(X)
    return score_clustering(y, found, ("ACC",))["ACC"], metric.n_clusters_ == len(np.unique(y))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration of the uneven sizes")
    parser.add_argument("--test-sets", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2, help="processes that cluster the test sets")
    parser.add_argument("--out", default="runs/c2m-unequal")
    args = parser.parse_args()
    import torch

    from deepclust.data.synthetic import synthetic_collection
    from deepclust.cluster.c2m import PRESETS, C2M

    os.makedirs(args.out, exist_ok=True)
    metrics = {"one size, without balance": ({"balance": False}, None),
               "one size, with balance": ({}, None),
               f"uneven sizes (alpha {args.alpha:g}), with balance": ({}, args.alpha)}
    rows = []
    for i, (name, (extra, alpha)) in enumerate(metrics.items()):
        path = os.path.join(args.out, f"metric-{i}.pt")
        t = time.perf_counter()
        if not os.path.isfile(path):
            train = synthetic_collection("blobs", 20, max_clusters=MAX_CLUSTERS, random_state=10_000,
                                         min_separation=SEPARATION, size_alpha=alpha)
            settings = {**PRESETS["transferable"], "input_dim": 2, **extra}
            C2M(max_clusters=MAX_CLUSTERS, epochs=10, random_state=0, **settings).fit(train).save(path)
        train_s = time.perf_counter() - t
        metric = C2M.load(path)
        weight = float(torch.nn.functional.softplus(metric.critic_.penalty[-1])) if metric.balance else float("nan")
        t = time.perf_counter()
        with Pool(args.jobs) as pool:
            out = pool.map(cluster_one, [(path, args.alpha, args.test_sets, j) for j in range(args.test_sets)],
                           chunksize=1)
        rows.append((name, np.mean([a for a, _ in out]), np.mean([k for _, k in out]), weight, train_s,
                     time.perf_counter() - t))
        print(f"{name}: ACC {rows[-1][1]:.3f}, k found in {rows[-1][2]:.0%} of {args.test_sets} sets, balance weight "
              f"{weight:.2f} (training {train_s:.0f} s, testing {rows[-1][5]:.0f} s)", flush=True)
    print("\n| metric trained on | ACC on uneven sets | true k found | learned balance weight |")
    print("|---|---|---|---|")
    for name, acc, k, weight, _, _ in rows:
        print(f"| {name} | {acc:.3f} | {k:.0%} | {'-' if np.isnan(weight) else f'{weight:.2f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

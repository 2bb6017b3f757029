"""K-means (and spectral) of 1,000,000 x 128 embeddings through the Dask path, against
single-process faiss on the same data, in one run.

The data: 100 Gaussian clusters in 128 dimensions (centres N(0, 1), points at std 0.25
around them: overlapping enough that the answer is not trivial), written to an embedding
store (deepclust.features.store.write_store) in partitions of 65,536 rows. Then, in the same process:

* reference: faiss.Kmeans (20 iterations, faiss's default training sample of 256 points
  per centre) in this process, then every point assigned by a flat index;
* deepclust, no Dask: kmeans_at_scale on the local executor (this process);
* deepclust on Dask: kmeans_at_scale on a LocalCluster of --workers processes (one
  thread each), and optionally the over-cluster spectral path (--spectral).

Printed: wall time and ratio to the reference, peak memory (this process; each Dask
worker's peak resident set), ARI against the truth and against the reference.

    python benchmarks/scale_kmeans.py [--n 1000000] [--dim 128] [--k 100] [--workers 2]
                                      [--lloyd-passes 2] [--spectral]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited from
    the parent a worker was forked from)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def warm_worker() -> float:
    """Import what the clustering tasks import; return the worker's memory after that."""
    import faiss  # noqa: F401

    import deepclust.cluster.at_scale  # noqa: F401

    return peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lloyd-passes", type=int, default=2)
    parser.add_argument("--partition", type=int, default=65_536)
    parser.add_argument("--spectral", action="store_true", help="also the over-cluster spectral path on Dask")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss
    from sklearn.metrics import adjusted_rand_score

    from deepclust.cluster.at_scale import kmeans_at_scale, spectral_at_scale
    from deepclust.features.store import write_store
    from deepclust.parallel.executors import LocalExecutor, open_executor

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.k, args.dim)).astype(np.float32)
    truth = rng.integers(0, args.k, size=args.n)
    X = centres[truth] + rng.normal(scale=0.25, size=(args.n, args.dim)).astype(np.float32)
    print(f"data: {args.n:,} x {args.dim}, {args.k} clusters, {X.nbytes / 2**20:.0f} MiB; "
          f"{os.cpu_count()} cores, faiss {faiss.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        table = write_store(os.path.join(tmp, "store"), X, partition_size=args.partition)
        print(f"store written in {time.perf_counter() - t:.1f} s ({len(table.blocks())} blocks)")

        t = time.perf_counter()
        km = faiss.Kmeans(args.dim, args.k, niter=20, seed=args.seed + 1)
        km.train(X)
        _, ref = km.index.search(X, 1)
        ref = ref[:, 0]
        ref_s = time.perf_counter() - t
        rows.append(("faiss, one process (reference)", ref_s, f"{peak_rss_mb():.0f} (this process)", ref))
        print(f"reference done in {ref_s:.1f} s", flush=True)

        t = time.perf_counter()
        local = kmeans_at_scale(table, args.k, LocalExecutor(), lloyd_passes=args.lloyd_passes, normalize=False,
                                random_state=args.seed)
        rows.append(("deepclust, no Dask (local executor)", time.perf_counter() - t,
                     f"{peak_rss_mb():.0f} (this process)", local.labels))

        with open_executor(f"local[{args.workers}]") as executor:
            baseline = executor.client.run(warm_worker)  # imports done before the clock starts
            t = time.perf_counter()
            on_dask = kmeans_at_scale(table, args.k, executor, lloyd_passes=args.lloyd_passes, normalize=False,
                                      random_state=args.seed)
            dask_s = time.perf_counter() - t
            peaks = executor.client.run(peak_rss_mb)
            worker_mem = " / ".join(f"{v:.0f}" for v in peaks.values())
            rows.append((f"deepclust on Dask, {args.workers} workers", dask_s, f"{worker_mem} (per worker)",
                         on_dask.labels))
            if args.spectral:
                t = time.perf_counter()
                result = spectral_at_scale(table, args.k, executor, normalize=False, random_state=args.seed)
                spectral, facts = result.labels, result.facts
                spec_s = time.perf_counter() - t
                peaks = executor.client.run(peak_rss_mb)
                rows.append((f"deepclust spectral on Dask ({facts['n_groups']} groups)", spec_s,
                             " / ".join(f"{v:.0f}" for v in peaks.values()) + " (per worker)", spectral))

    print("\n| path | wall s | x reference | peak memory MiB | ARI vs truth | ARI vs reference |")
    print("|---|---|---|---|---|---|")
    for name, seconds, memory, labels in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / ref_s:.2f} | {memory} | "
              f"{adjusted_rand_score(truth, labels):.4f} | {adjusted_rand_score(ref, labels):.4f} |")
    print(f"spectral groups: {facts['n_groups']}, sample {facts['sample_size']:,}" if args.spectral else "")
    print(f"\nDask workers after importing deepclust.cluster.at_scale and faiss: "
          f"{' / '.join(f'{v:.0f}' for v in baseline.values())} MiB; the clustering adds the rest")
    print(f"Lloyd passes: {args.lloyd_passes}; sample {on_dask.sample_size:,} rows; "
          f"inertia per pass {', '.join(f'{v:.6g}' for v in on_dask.inertia_history)}")
    per_point = dask_s / args.n * args.workers
    print(f"Dask k-means: {per_point * 1e6:.2f} worker-microseconds per point "
          f"({args.lloyd_passes + 1} assignment passes, k={args.k}, d={args.dim})")


if __name__ == "__main__":
    main()

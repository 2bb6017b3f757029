"""The report of a large run: time, memory and file sizes at N images against N/10.

A run folder is made up in a temporary directory: N rows whose image paths cycle over the
real EU-moths files (so thumbnails decode real JPEGs), true classes from their species,
clusters that follow the species with 10% of rows moved to another cluster, and
embeddings drawn around one centre per cluster. `deepclust report` (write_report with its
defaults: a 5,000-image map, 8 thumbnails in each of the 60 largest clusters) runs on it
and on a tenth of it, in the same process.

    python benchmarks/report_scale.py [--n 200000] [--dim 1280] [--map tsne|pca]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "eu-moths", "images")


def make_run(folder: str, n: int, dim: int, files: list[tuple[str, str]], seed: int = 0) -> None:
    from deepclust import runs

    rng = np.random.default_rng(seed)
    species = sorted({s for _, s in files})
    code = {s: i for i, s in enumerate(species)}
    rows = [files[i % len(files)] for i in range(n)]
    truth = np.array([code[s] for _, s in rows])
    clusters = np.where(rng.random(n) < 0.1, rng.integers(0, len(species), n), truth)
    centres = rng.normal(size=(len(species), dim)).astype(np.float32)
    embeddings = centres[clusters] + rng.normal(scale=0.8, size=(n, dim)).astype(np.float32)
    distances = np.linalg.norm(embeddings - centres[clusters], axis=1)
    os.makedirs(folder, exist_ok=True)
    runs.write_assignments(folder, [p for p, _ in rows], clusters, distances, [s for _, s in rows])
    runs.write_embeddings(folder, embeddings)
    runs.write_skipped(folder, [])
    runs.write_summary(folder, {"command": "cluster", "config": {"algorithm": "kmeans", "backbone": "synthetic"},
                                "resolved": {"n_clusters": len(species), "n_clusters_from": "made up"},
                                "counts": {"images_clustered": n}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--map", default="tsne", choices=["tsne", "pca"])
    args = parser.parse_args()
    if not os.path.isdir(DATA):
        print(f"EU moths not found at {DATA}", file=sys.stderr)
        return 1
    from deepclust.jobs.report import ReportOptions, write_report

    files = [(os.path.abspath(os.path.join(DATA, s, f)), s) for s in sorted(os.listdir(DATA))
             for f in sorted(os.listdir(os.path.join(DATA, s)))]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.n // 10, args.n):
            run = os.path.join(tmp, f"run{n}")
            t = time.perf_counter()
            make_run(run, n, args.dim, files)
            made = time.perf_counter() - t
            t = time.perf_counter()
            html = write_report(run, options=ReportOptions(map_method=args.map))
            seconds = time.perf_counter() - t
            sizes = {name: os.path.getsize(os.path.join(run, "report", name)) for name in sorted(os.listdir(os.path.join(run, "report")))}
            results[n] = seconds
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{n:>8} images x {args.dim}: run folder made in {made:.0f} s; report in {seconds:.1f} s; "
                  f"peak RSS of the process so far {peak:.0f} MB")
            print("          " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
            assert os.path.getsize(html) > 0
    small, large = results[args.n // 10], results[args.n]
    print(f"report time at {args.n} / at {args.n // 10}: {large / small:.2f} (the data grew 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

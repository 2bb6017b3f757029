"""The review-and-refine loop measured with a simulated user who answers from the true species.

On EU moths (all 200 species, 2,205 images, default Lite0 backbone; or the 50 test species
with ``--subset test``, optionally through a fine-tuned backbone ``--weights best.pt``), a first
run clusters every image (k = the number of species). Then an oracle spends a fixed budget:

- (a) ``random``: labels a random 5 %, 10 % or 20 % of the images;
- (b) ``queue``: labels as many images, taken in the review queue's order (as ``deepclust
  review`` lists them: clusters least sure of themselves first, their least certain image
  each in turn);
- (c) ``clusters``: names whole clusters: for the B most populous clusters it keeps the images
  of the majority species (named) and marks the others as not belonging.

After each, ``deepclust refine`` runs (and, with ``--finetune``, ``refine --finetune``), and only
the images the user never touched are scored: ACC and ARI before and after, with wall times.

    python benchmarks/refine_moths.py [--subset test] [--weights FILE] [--finetune] [--budgets 5 10 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from deepclust import runs
from deepclust.cluster.space import distances_to_centres, make_clusterer, prepare_features
from deepclust.config import ClusterConfig
from deepclust.feedback import Feedback
from deepclust.jobs.refine import refine_run
from deepclust.jobs.review import confidence, review_queue
from moths import CACHE, IMAGES, moth_embeddings



def first_run(folder: str, args) -> tuple[runs.Run, float]:
    """A run folder as `deepclust cluster` writes it, from cached embeddings."""
    vectors, species, kept = moth_embeddings(args.cache, weights=args.weights, subset=args.subset)
    y = species.tolist()
    k = len(set(y))
    t = time.perf_counter()
    X = prepare_features(vectors, True)
    clusters = make_clusterer(args.algorithm, k, args.seed).fit_predict(X)
    seconds = time.perf_counter() - t
    config = ClusterConfig(images=IMAGES, out=folder, n_clusters=k, algorithm=args.algorithm, labels="folders",
                           weights=args.weights or "pretrained", seed=args.seed)
    runs.write_embeddings(folder, vectors)
    runs.write_run_files(config, [r.path for r in kept], clusters, distances_to_centres(X, clusters), y,
                         runs.run_metrics(y, clusters))
    runs.RunSummary(command="cluster", config=config.to_dict(), resolved={"normalized": True}, seed=args.seed,
                    counts={}, timings_seconds={"cluster": seconds}).write(folder)
    return runs.load_run(folder), seconds


def oracle(kind: str, budget: float, run: runs.Run, rng: np.random.Generator) -> tuple[Feedback, int]:
    """The feedback of a simulated user, and how many images it touched."""
    y = np.asarray(run.labels)
    paths = run.paths
    if kind == "clusters":
        ids, sizes = np.unique(run.clusters, return_counts=True)
        fb = Feedback()
        for c in ids[np.argsort(-sizes, kind="stable")][: int(budget)]:
            members = np.flatnonzero(run.clusters == c)
            members = members[np.argsort(run.distances[members])]
            species, counts = np.unique(y[members], return_counts=True)
            majority = species[np.argmax(counts)]
            keep = members[y[members] == majority]
            fb.labels.update({paths[i]: str(majority) for i in keep})
            fb.cannot_link += [[paths[i], paths[keep[0]]] for i in members if y[i] != majority]
        touched = len(fb.labels) + len(fb.cannot_link)
        return fb, touched
    n = int(round(budget / 100 * len(paths)))
    if kind == "random":
        picked = rng.choice(len(paths), size=n, replace=False)
    else:  # the review queue's order, as deepclust review lists it
        margin, _ = confidence(run)
        picked = review_queue(run.clusters, margin)[:n]
    return Feedback(labels={paths[i]: str(y[i]) for i in picked}), n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=CACHE)
    parser.add_argument("--subset", help="a subset of the eu-moths split (e.g. test); default: all 200 species")
    parser.add_argument("--weights", help="a backbone checkpoint (e.g. fine-tuned on the training species)")
    parser.add_argument("--algorithm", default="kmeans", help="the first run's clusterer (default kmeans)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20], help="percent of images labelled")
    parser.add_argument("--clusters", type=int, nargs="+", default=[10, 25, 50], help="clusters named, oracle (c)")
    parser.add_argument("--oracles", nargs="+", default=["random", "queue", "clusters"])
    parser.add_argument("--finetune", action="store_true", help="also refine --finetune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="refine-moths-")
    run, seconds = first_run(os.path.join(work, "first"), args)
    print(f"first run: {len(run.paths)} images, {len(set(run.labels))} species, {args.algorithm} in {seconds:.1f} s "
          f"(work folder {work})")
    print(f"{'oracle':9s} {'budget':>7s} {'touched':>8s} {'untouched':>9s}  {'first ACC/ARI':>14s}  "
          f"{'refine ACC/ARI':>15s} {'s':>5s}" + ("  finetune ACC/ARI      s" if args.finetune else ""))
    for kind in args.oracles:
        for budget in (args.clusters if kind == "clusters" else args.budgets):
            rng = np.random.default_rng(args.seed)
            fb, touched = oracle(kind, budget, run, rng)
            path = os.path.join(work, f"{kind}-{budget:g}.json")
            fb.save(path)
            t = time.perf_counter()
            result = refine_run(run.folder, os.path.join(work, f"refined-{kind}-{budget:g}"), path, seed=args.seed)
            refine_seconds = time.perf_counter() - t
            u = result.info["untouched"]
            line = (f"{kind:9s} {budget:>6g}{'%' if kind != 'clusters' else ' '} {touched:8d} {u['images']:9d}  "
                    f"{u['before']['ACC']:.3f}/{u['before']['ARI']:.3f}  {u['after']['ACC']:7.3f}/{u['after']['ARI']:.3f} "
                    f"{refine_seconds:5.1f}")
            if args.finetune:
                t = time.perf_counter()
                tuned = refine_run(run.folder, os.path.join(work, f"finetuned-{kind}-{budget:g}"), path, seed=args.seed,
                                   finetune=True, progress=args.progress)
                f = tuned.info["untouched"]["after"]
                line += f"  {f['ACC']:.3f}/{f['ARI']:.3f} {time.perf_counter() - t:6.0f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

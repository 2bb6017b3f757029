"""Label-free selection of k and the algorithm (deepclust.selection) on collections with known
classes: the k each criterion picks against the true k, and the ACC / ARI of the clustering it
selects against the best one the labels would choose (the oracle), over kmeans, spectral and
agglomerative at a grid of k around the truth. The collections are those of
benchmarks/collections_k.py (embedded once, cached).

    python benchmarks/select_collections.py [COLLECTION ...]      # all: ~10 min idle on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time


from collections_k import COLLECTIONS, load_collection
from deepclust.cluster.space import prepare_features
from deepclust.metrics import matched_accuracy
from deepclust.selection import CRITERIA, select

ALGORITHMS = ("kmeans", "spectral", "agglomerative")


def k_grid(truth: int) -> list[int]:
    """About 15 ks from a fifth of the truth (at least 2) to twice it."""
    lo, hi = max(2, truth // 5), 2 * truth
    step = max(1, int(round((hi - lo) / 15)))
    return sorted(set(range(lo, hi + 1, step)) | {truth})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collections", nargs="*", default=list(COLLECTIONS))
    args = parser.parse_args(argv)
    from sklearn.metrics import adjusted_rand_score

    criteria = [c for c in CRITERIA if c != "c2m"]
    print("| collection | true k | " + " | ".join(criteria) + " | oracle |")
    print("|---|---|" + "---|" * (len(criteria) + 1))
    tally = {c: [0, 0] for c in criteria}  # within 25% of the truth; within 0.03 ACC of the oracle
    ceiling = []  # per collection: how the true classes themselves score, and the choice with k known
    for name in args.collections:
        vectors, y = load_collection(name)
        X = prepare_features(vectors, True)
        y = y.astype(str)
        truth = len(set(y.tolist()))
        t = time.perf_counter()
        sel = select(X, k_grid(truth), ALGORITHMS, criteria=criteria, seed=0)
        seconds = time.perf_counter() - t
        acc = {id(c): matched_accuracy(y, c.labels) for c in sel.candidates}
        oracle = max(sel.candidates, key=lambda c: acc[id(c)])
        cells = []
        for criterion in criteria:
            best = sel.best(criterion)
            close_k = abs(best.k - truth) <= 0.25 * truth
            close_acc = acc[id(oracle)] - acc[id(best)] <= 0.03
            tally[criterion][0] += close_k
            tally[criterion][1] += close_acc
            cells.append(f"k={best.k} {best.algorithm[:4]} ACC {acc[id(best)]:.3f} ARI "
                         f"{adjusted_rand_score(y, best.labels):.3f}{' (weak)' if sel.weak(criterion) else ''}")
        cells.append(f"k={oracle.k} {oracle.algorithm[:4]} ACC {acc[id(oracle)]:.3f} ARI "
                     f"{adjusted_rand_score(y, oracle.labels):.3f}")
        print(f"| {name} ({len(X)} images, {seconds:.0f} s) | {truth} | " + " | ".join(cells) + " |", flush=True)
        ceiling.append(_ceiling(name, sel, y, truth, acc, oracle))
    n = len(args.collections)
    print("\nk within 25% of the truth: " + ", ".join(f"{c} {tally[c][0]}/{n}" for c in criteria))
    print("ACC within 0.03 of the oracle: " + ", ".join(f"{c} {tally[c][1]}/{n}" for c in criteria))
    print("\nThe ceiling: a criterion can only choose a clustering like the true classes where it scores "
          "them above the clusterings unlike them.\n")
    print("| collection | generalization of the true classes / the best candidate (the oracle's rank) | "
          "silhouette of the true classes / the best candidate | k known: generalization's algorithm, ACC "
          "(oracle at that k) |")
    print("|---|---|---|---|")
    for row in ceiling:
        print(row["line"])
    for criterion in ("generalization", "silhouette"):
        print(f"true classes above every candidate by {criterion}: "
              f"{sum(r['above'][criterion] for r in ceiling)}/{n}")
    print(f"k known, the algorithm generalization picks within 0.03 ACC of the best at that k: "
          f"{sum(r['k_known'] for r in ceiling)}/{n}")
    return 0


def _ceiling(name, sel, y, k, acc, oracle) -> dict:
    """How the criteria score the true classes against the candidates, and what the
    generalization criterion picks among the algorithms when k is the true one."""
    truth = sel.score(y)
    above, cells = {}, []
    for criterion in ("generalization", "silhouette"):
        best = max(c.scores[criterion] for c in sel.candidates)
        above[criterion] = truth[criterion] > best
        cell = f"{truth[criterion]:.3f} / {best:.3f}"
        if criterion == "generalization":
            rank = 1 + sum(c.scores[criterion] > oracle.scores[criterion] for c in sel.candidates)
            cell += f" ({rank} of {len(sel.candidates)})"
        cells.append(cell)
    at_k = [c for c in sel.candidates if c.k == k]
    pick = max(at_k, key=lambda c: c.scores["generalization"])
    best_at_k = max(acc[id(c)] for c in at_k)
    cells.append(f"{pick.algorithm} {acc[id(pick)]:.3f} ({best_at_k:.3f})")
    return {"line": f"| {name} | " + " | ".join(cells) + " |", "above": above,
            "k_known": best_at_k - acc[id(pick)] <= 0.03}


if __name__ == "__main__":
    sys.exit(main())

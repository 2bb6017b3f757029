"""The linear scatter head on EU moths: fitted on the 100 training species' Lite0 embeddings,
applied to the 50 test species, clustered with k = 50 (5 seeds), against the raw embeddings.

    python benchmarks/scatter_head_moths.py [--cache runs/benchmark-cache]

Prints ARI AVG (SD) for k-means and spectral, raw and through the head, and the head's fit time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from deepclust import EmbeddingStore, create_backbone, extract_embeddings, find_images
from deepclust.cluster.space import make_clusterer, prepare_features
from deepclust.data import load_split
from deepclust.methods.scatter_head import ScatterHead
from deepclust.metrics import adjusted_rand

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("DEEPCLUST_SHARED", os.path.join(HERE, "..", "..", "shared"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=os.path.join(HERE, "..", "runs", "benchmark-cache"))
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    records = find_images(os.path.join(SHARED, "data", "eu-moths", "images"))
    backbone = create_backbone("tf_efficientnet_lite0")
    store = EmbeddingStore(os.path.join(args.cache, "eu-moths"), backbone.signature())  # shared with clustering.py
    emb = extract_embeddings(records, backbone, batch_size=32, store=store, progress=False)
    folders = np.array([records[i].folder for i in emb.indices])
    split = load_split("eu-moths")
    train, test = np.isin(folders, split.subsets["train"]), np.isin(folders, split.subsets["test"])
    t = time.perf_counter()
    head = ScatterHead().fit(prepare_features(emb.vectors[train], True), folders[train])
    seconds = time.perf_counter() - t
    raw = prepare_features(emb.vectors[test], True)
    spaces = {"raw embeddings": raw, "scatter head": prepare_features(head.transform(raw), True)}
    k = len(np.unique(folders[test]))
    for algorithm in ("kmeans", "spectral"):
        for name, Z in spaces.items():
            aris = [adjusted_rand(folders[test], make_clusterer(algorithm, k, s).fit_predict(Z)) for s in range(args.seeds)]
            print(f"{algorithm:8s} {name:15s} ARI {np.mean(aris):.3f} ({np.std(aris, ddof=1):.3f})")
    print(f"head: {head.n_components_} components, shrinkage {head.shrinkage_:.3f}, fitted in {seconds:.1f} s "
          f"on {int(train.sum())} images of {len(np.unique(folders[train]))} species")
    return 0


if __name__ == "__main__":
    sys.exit(main())

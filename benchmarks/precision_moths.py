"""What --precision int8 (and bf16, where the CPU has bf16 instructions) costs: all 2,205
EU-moths images embedded at fp32 and at each reduced precision (fresh caches, alternating
rounds), the embedding time as a ratio to fp32's, the cosine of each image's vector to its
fp32 vector, and k-means (k = 200) on each: ARI against the fp32 clustering of the same
seed and against the species, 3 seeds.

    python benchmarks/precision_moths.py [--precisions int8 bf16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from deepclust import create_backbone, find_images
from deepclust.cluster import KMeans
from deepclust.cluster.space import prepare_features
from deepclust.errors import DeepclustError
from deepclust.features.extract import embed_records
from moths import IMAGES


def main(argv=None) -> int:
    from sklearn.metrics import adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["int8", "bf16"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    records = find_images(IMAGES)
    y = np.array([r.folder for r in records])
    backbone = create_backbone("tf_efficientnet_lite0", weights="pretrained").eval()
    seconds: dict[str, list[float]] = {}
    vectors: dict[str, np.ndarray] = {}
    for i in range(args.rounds):
        order = ["fp32", *args.precisions]
        for precision in order if i % 2 == 0 else order[::-1]:
            with tempfile.TemporaryDirectory() as cache:
                try:
                    emb = embed_records(records, backbone, cache, progress=False, precision=precision)
                except DeepclustError as exc:
                    print(f"{precision}: {exc}")
                    args.precisions = [p for p in args.precisions if p != precision]
                    continue
            seconds.setdefault(precision, []).append(emb.seconds)
            vectors[precision] = emb.vectors
    base = prepare_features(vectors["fp32"], True)
    fp32 = {seed: KMeans(n_clusters=200, random_state=seed).fit_predict(base) for seed in range(3)}
    print(f"fp32: embedding {min(seconds['fp32']):.1f} s (best of {args.rounds}); k-means k=200 ARI to species "
          f"{np.mean([adjusted_rand_score(y, fp32[s]) for s in range(3)]):.4f}")
    for precision in args.precisions:
        X = prepare_features(vectors[precision], True)
        cosine = (X * base).sum(1)
        labels = {seed: KMeans(n_clusters=200, random_state=seed).fit_predict(X) for seed in range(3)}
        to_fp32 = [adjusted_rand_score(fp32[s], labels[s]) for s in range(3)]
        to_species = [adjusted_rand_score(y, labels[s]) for s in range(3)]
        print(f"{precision}: embedding {min(seconds[precision]):.1f} s, {min(seconds['fp32']) / min(seconds[precision]):.2f}x "
              f"fp32; cosine to fp32 min {cosine.min():.4f} mean {cosine.mean():.4f}; k-means ARI to fp32's clustering "
              + " ".join(f"{a:.3f}" for a in to_fp32) + "; to species " + " ".join(f"{a:.4f}" for a in to_species)
              + " (fp32: " + " ".join(f"{adjusted_rand_score(y, fp32[s]):.4f}" for s in range(3)) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())

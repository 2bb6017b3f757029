"""Should --fast-decode (JPEG draft mode) be the default? Camera photos are large: 40 EU-moths
species x 10 images upscaled to 12-megapixel JPEGs (4032 x 3024, quality 90) in a temporary
folder, embedded with and without draft decoding (alternating rounds, ONNX Runtime, no
cache), and at the collection's own size. Prints the images/s of each, the cosine between
the two decodes' vectors, and the k-means (k = 40) ARI of each against the species (5 seeds).

    python benchmarks/fast_decode.py [--species 40] [--per-species 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from deepclust import create_backbone, find_images
from deepclust.cluster import KMeans
from deepclust.cluster.space import prepare_features
from deepclust.features.extract import extract_embeddings
from moths import IMAGES


def main(argv=None) -> int:
    from sklearn.metrics import adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--species", type=int, default=40)
    parser.add_argument("--per-species", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    records = find_images(IMAGES)
    by_species: dict[str, list] = {}
    for r in records:
        by_species.setdefault(r.folder, []).append(r)
    chosen = [r for name in sorted(by_species)[: args.species] for r in by_species[name][: args.per_species]]
    backbone = create_backbone("tf_efficientnet_lite0", weights="pretrained").eval()
    with tempfile.TemporaryDirectory(prefix="deepclust-12mp-") as tmp:
        for r in chosen:
            os.makedirs(os.path.join(tmp, r.folder), exist_ok=True)
            with Image.open(r.path) as img:
                img.convert("RGB").resize((4032, 3024), Image.BICUBIC).save(
                    os.path.join(tmp, r.folder, os.path.basename(r.path).rsplit(".", 1)[0] + ".jpg"), quality=90)
        large = find_images(tmp)
        y = np.array([r.folder for r in large])
        print(f"{len(large)} images of {len(set(y))} species at 4032 x 3024 ({sum(r.size for r in large) / len(large) / 1e6:.1f} MB each)")
        rate = {False: 0.0, True: 0.0}
        vectors = {}
        for i in range(args.rounds):
            for fast in ((False, True) if i % 2 == 0 else (True, False)):
                emb = extract_embeddings(large, backbone, batch_size=32, progress=False, fast_decode=fast,
                                         runtime="onnxruntime")
                rate[fast] = max(rate[fast], len(large) / emb.seconds)
                vectors[fast] = emb.vectors
    small = extract_embeddings(chosen, backbone, batch_size=32, progress=False, runtime="onnxruntime")
    small_fast = extract_embeddings(chosen, backbone, batch_size=32, progress=False, runtime="onnxruntime",
                                    fast_decode=True)
    full, draft = prepare_features(vectors[False], True), prepare_features(vectors[True], True)
    cosine = (full * draft).sum(1)
    print(f"12 MP: full decode {rate[False]:.1f} img/s, draft {rate[True]:.1f} img/s ({rate[True] / rate[False]:.1f}x); "
          f"cosine draft/full min {cosine.min():.5f} mean {cosine.mean():.5f}")
    for name, X in (("full", full), ("draft", draft)):
        aris = [adjusted_rand_score(y, KMeans(n_clusters=len(set(y)), random_state=s).fit_predict(X)) for s in range(5)]
        print(f"  k-means ARI to species, {name:5s} decode: mean {np.mean(aris):.4f} (" + " ".join(f"{a:.3f}" for a in aris) + ")")
    ratio = (len(chosen) / small_fast.seconds) / (len(chosen) / small.seconds)
    same = np.abs(small.vectors - small_fast.vectors).max()
    print(f"the collection's own files (about {np.mean([r.size for r in chosen]) / 1e3:.0f} kB): draft/full rate "
          f"{ratio:.2f}, largest vector difference {same:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

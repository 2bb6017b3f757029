"""How well `deepclust predict` places new images, on EU moths with the default backbone.

The 50 test species of the eu-moths split: all but HOLD images of each are clustered with
`deepclust cluster --labels folders` (k-means, k = 50); the HOLD held-back images of each
are then predicted into that run, beside HOLD images of each of UNSEEN training species
the run never saw. Prints:

* agreement: share of held-back images put in the cluster that holds most of their
  class-mates (where `deepclust cluster` put their species), over all species and over
  the species the run kept together (at least --clean of their images in one cluster);
  and the share put in a cluster holding any class-mate;
* far rate of held-back images (species in the run) and of unseen species;
* the ceiling the embedding sets: with a perfect clustering (every species its own cluster)
  the share of held-back images nearest their own species' centre, and the share whose
  nearest clustered image is a class-mate. No assignment rule over these embeddings does
  much better than these.

The folders are symbolic links in a temporary directory (the data is not copied).

    python benchmarks/predict_moths.py [--hold 2] [--unseen 50] [--far-quantile 0.95] [--algorithm kmeans]
                                       [--weights PATH] [--assign centre|neighbours]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "eu-moths", "images")


def link_images(root: str, species: list[str], pick) -> int:
    n = 0
    for s in species:
        files = sorted(os.listdir(os.path.join(DATA, s)))
        os.makedirs(os.path.join(root, s), exist_ok=True)
        for f in pick(files):
            os.symlink(os.path.abspath(os.path.join(DATA, s, f)), os.path.join(root, s, f))
            n += 1
    return n


def embedding_ceiling(run, held_dir: str, held_labels: list[str], held_paths: list[str]) -> tuple[float, float]:
    """(share of held-back images nearest their species' centre, share whose nearest clustered
    image is of their species), in the space the run clustered, as if its clusters were the
    true species."""
    from deepclust.features.backbones import create_backbone
    from deepclust.data import find_images
    from deepclust.features.extract import EmbeddingStore, embedding_signature, extract_embeddings
    from deepclust.runs import CACHE, run_path

    config = run.summary["config"]
    fast = bool(config.get("fast_decode", False))
    backbone = create_backbone(config["backbone"], weights=run.backbone_weights(), image_size=config.get("image_size"))
    records = {r.path: r for r in find_images(held_dir)}
    store = EmbeddingStore(run_path(run.folder, CACHE), embedding_signature(backbone, fast))  # predict's, reused
    emb = extract_embeddings([records[p] for p in held_paths], backbone, store=store, progress=False, fast_decode=fast)
    known, new = run.embeddings.astype(np.float64), emb.vectors.astype(np.float64)
    if config.get("normalize", True):
        known /= np.linalg.norm(known, axis=1, keepdims=True)
        new /= np.linalg.norm(new, axis=1, keepdims=True)
    species = np.asarray(run.labels)
    names = np.unique(species)
    centres = np.stack([known[species == s].mean(0) for s in names])
    truth = np.asarray(held_labels)[emb.indices]
    nearest_centre = names[((new[:, None] - centres[None]) ** 2).sum(-1).argmin(1)]
    nearest_image = species[((new[:, None] - known[None]) ** 2).sum(-1).argmin(1)]
    return float(np.mean(nearest_centre == truth)), float(np.mean(nearest_image == truth))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, default=2)
    parser.add_argument("--unseen", type=int, default=50)
    parser.add_argument("--far-quantile", type=float, default=0.95)
    parser.add_argument("--algorithm", default="kmeans")
    parser.add_argument("--weights", default="pretrained", help="the backbone's weights (a fine-tuned checkpoint)")
    parser.add_argument("--clean", type=float, default=0.8)
    parser.add_argument("--assign", default="centre", choices=["centre", "neighbours"])
    args = parser.parse_args()
    if not os.path.isdir(DATA):
        print(f"EU moths not found at {DATA}", file=sys.stderr)
        return 1
    from deepclust.config import ClusterConfig
    from deepclust.data import load_split
    from deepclust.jobs.cluster import run_cluster
    from deepclust.jobs.predict import predict_images
    from deepclust.runs import load_run

    split = load_split("eu-moths")
    test, train = sorted(split.classes("test")), sorted(split.classes("train"))[:args.unseen]
    with tempfile.TemporaryDirectory() as tmp:
        known, held, unseen = (os.path.join(tmp, d) for d in ("known", "held", "unseen"))
        n_known = link_images(known, test, lambda f: f[:-args.hold])
        n_held = link_images(held, test, lambda f: f[-args.hold:])
        n_unseen = link_images(unseen, train, lambda f: f[:args.hold])
        out = os.path.join(tmp, "run")
        t = time.perf_counter()
        run_cluster(ClusterConfig(images=known, out=out, labels="folders", algorithm=args.algorithm,
                                  weights=args.weights, progress=False))
        t_cluster = time.perf_counter() - t
        run = load_run(out)
        home, share, anywhere = {}, {}, {}  # species -> its largest cluster, the share there, all its clusters
        for s in test:
            counts = collections.Counter(run.clusters[[i for i, lab in enumerate(run.labels) if lab == s]].tolist())
            home[s], top = counts.most_common(1)[0]
            share[s], anywhere[s] = top / sum(counts.values()), set(counts)
        t = time.perf_counter()
        seen = predict_images(out, held, os.path.join(tmp, "p-held"), args.far_quantile, labels="folders",
                              assign=args.assign, progress=False)
        t_predict = time.perf_counter() - t
        new = predict_images(out, unseen, os.path.join(tmp, "p-unseen"), args.far_quantile, progress=False)
        ceiling_centre, ceiling_nn = embedding_ceiling(run, held, seen.labels, seen.paths)
        pairs = list(zip(seen.clusters.tolist(), seen.labels))
        agree = np.mean([c == home[s] for c, s in pairs])
        clean = [c == home[s] for c, s in pairs if share[s] >= args.clean]
        mates = np.mean([c in anywhere[s] for c, s in pairs])
        print(f"EU moths test species: {n_known} images clustered ({args.algorithm}, k=50, weights {args.weights}) in "
              f"{t_cluster:.0f} s, ACC {run.summary['metrics']['ACC']:.3f}")
        print(f"held-back images of those species: {n_held}; unseen species' images: {n_unseen} "
              f"({len(train)} training species); far quantile {args.far_quantile}; assign {args.assign}")
        print(f"agreement with where the run put their species (its largest cluster): {agree:.3f}; on the "
              f"{sum(share[s] >= args.clean for s in test)} species with >= {args.clean:.0%} of their images in one "
              f"cluster ({len(clean)} images): {np.mean(clean) if clean else float('nan'):.3f}")
        print(f"put in a cluster holding any class-mate: {mates:.3f}")
        print(f"ceiling of the embedding (a perfect clustering: each species its own cluster): nearest species "
              f"centre {ceiling_centre:.3f}, nearest clustered image a class-mate {ceiling_nn:.3f}")
        print(f"far rate: held-back (species in the run) {seen.far.mean():.3f}, unseen species {new.far.mean():.3f}")
        print(f"predict time for {n_held} images: {t_predict:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

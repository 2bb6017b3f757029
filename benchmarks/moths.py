"""The EU-moths embeddings the benchmarks share: every image (or one subset's) through a
backbone, cached under ``runs/benchmark-cache`` so each benchmark embeds them once."""

from __future__ import annotations

import os

import numpy as np

from deepclust import EmbeddingStore, create_backbone, extract_embeddings, find_images
from deepclust.data import load_split

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("DEEPCLUST_SHARED", os.path.join(HERE, "..", "..", "shared"))
IMAGES = os.path.join(SHARED, "data", "eu-moths", "images")
CACHE = os.path.join(HERE, "..", "runs", "benchmark-cache")


def moth_embeddings(cache: str = CACHE, weights: str | None = None, flip: bool = False, subset: str | None = None,
                    name: str = "eu-moths") -> tuple[np.ndarray, np.ndarray, list]:
    """(vectors, species, records) of the EU-moths images (of ``subset`` of the eu-moths split,
    if given) through Lite0 (``weights``: a checkpoint instead of its ImageNet weights)."""
    records = find_images(IMAGES)
    if subset:
        keep = set(load_split("eu-moths").classes(subset))
        records = [r for r in records if r.folder in keep]
    backbone = create_backbone("tf_efficientnet_lite0", weights=weights or "pretrained")
    backbone.flip_average = flip
    if weights:
        name += "-" + os.path.basename(os.path.dirname(os.path.abspath(weights)))
    store = EmbeddingStore(os.path.join(cache, name + ("-flip" if flip else "")), backbone.signature())
    emb = extract_embeddings(records, backbone, batch_size=32, store=store, progress=False, runtime="auto")
    kept = [records[i] for i in emb.indices]
    return emb.vectors, np.array([r.folder for r in kept]), kept

"""The collections with known classes that the selection benchmarks score: each one's
vectors and true classes, embedded once through the default backbone (Lite0) and cached
under ``runs/benchmark-cache``.

    python benchmarks/collections_k.py            # embed every collection (idle: ~6 min)

MNIST and CIFAR-10 are a class-stratified sample of 2,000 of their 10,000 test images
(seed 0), so that a sweep over k stays within minutes; COIL-20 is whole (1,440); Omniglot is
its held-out background alphabets (Greek and Tagalog: 41 characters, 820 images); EU moths
are all 200 species (2,205 images) and the 50 test species (555).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from deepclust import EmbeddingStore, create_backbone, extract_embeddings, find_images
from deepclust.data import load_split
from moths import CACHE, SHARED, moth_embeddings

DATA = os.path.join(SHARED, "data")
SAMPLE = 2000
COLLECTIONS = ("eu-moths-test", "eu-moths", "mnist", "mnist-pixels", "coil20", "coil20-pixels", "cifar10", "omniglot")


def _stratified(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(keep)


def _embed_arrays(images: np.ndarray, name: str, cache: str) -> np.ndarray:
    """Grey (n, H, W) arrays in [0, 1] or uint8 through Lite0, cached as one .npy."""
    import torch
    from PIL import Image

    path = os.path.join(cache, name + ".npy")
    if os.path.exists(path):
        return np.load(path)
    backbone = create_backbone("tf_efficientnet_lite0", weights="pretrained").eval()
    transform = backbone.transform()
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            batch = torch.stack([transform(Image.fromarray(a).convert("RGB")) for a in images[start:start + 64]])
            out.append(backbone(batch).numpy())
    vectors = np.concatenate(out).astype(np.float32)
    os.makedirs(cache, exist_ok=True)
    np.save(path + ".tmp.npy", vectors)
    os.replace(path + ".tmp.npy", path)
    return vectors


def _embed_folder(records, name: str, cache: str) -> np.ndarray:
    backbone = create_backbone("tf_efficientnet_lite0", weights="pretrained")
    store = EmbeddingStore(os.path.join(cache, name), backbone.signature())
    emb = extract_embeddings(records, backbone, batch_size=32, store=store, progress=False, runtime="auto")
    assert len(emb.indices) == len(records), emb.skipped
    return emb.vectors


def load_collection(name: str, cache: str = CACHE) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, classes) of one of :data:`COLLECTIONS`."""
    from deepclust.data.datasets import load_coil20, load_mnist, prepare_omniglot

    if name in ("eu-moths", "eu-moths-test"):
        vectors, y, _ = moth_embeddings(cache, subset="test" if name == "eu-moths-test" else None)
        return vectors, y
    if name.startswith("mnist"):
        x, y = load_mnist(os.path.join(DATA, "mnist"))
        keep = _stratified(y, SAMPLE)
        x, y = x[keep], y[keep]
        if name == "mnist-pixels":
            return x.reshape(len(x), -1).astype(np.float32) / 255.0, y
        return _embed_arrays(x, "mnist-2000-lite0", cache), y
    if name.startswith("coil20"):
        x, y = load_coil20(os.path.join(DATA, "coil20", "COIL20.mat"))
        if name == "coil20-pixels":
            return x.reshape(len(x), -1).astype(np.float32), y
        return _embed_arrays(x, "coil20-lite0", cache), y
    if name == "cifar10":
        records = find_images(os.path.join(DATA, "cifar10-test"))
        y = np.array([r.folder for r in records])
        records = [records[i] for i in _stratified(y, SAMPLE)]
        return _embed_folder(records, "cifar10-2000", cache), np.array([r.folder for r in records])
    if name == "omniglot":
        folder = prepare_omniglot(os.path.join(DATA, "omniglot"),
                                  os.path.join(os.path.expanduser("~"), ".cache", "deepclust-bench", "omniglot"))
        keep = set(load_split("omniglot").classes("val"))
        records = [r for r in find_images(folder) if r.folder in keep]
        return _embed_folder(records, "omniglot-val", cache), np.array([r.folder for r in records])
    raise ValueError(f"unknown collection {name!r}; known: {', '.join(COLLECTIONS)}")


if __name__ == "__main__":
    for collection in sys.argv[1:] or COLLECTIONS:
        X, labels = load_collection(collection)
        print(f"{collection}: {X.shape[0]} images, {X.shape[1]} dims, {len(set(labels.tolist()))} classes", flush=True)

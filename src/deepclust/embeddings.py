"""Turning images into feature vectors, with an on-disk cache that survives interruption.

:func:`extract_embeddings` runs a :class:`~deepclust.backbones.Backbone` over image
files. With an :class:`EmbeddingStore` it first reuses every vector already computed
for the same file (same path, size and modification time) and the same backbone
(name, weights, preprocessing), then writes new vectors in shards as it goes, so an
interrupted extraction resumes where it stopped. Files that cannot be decoded are
reported and skipped, never fatal.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deepclust.backbones import Backbone
from deepclust.data.folders import ImageRecord, describe_load_error, load_image
from deepclust.io import atomic_write, write_npz

STORE_VERSION = 1


def record_key(record: ImageRecord) -> str:
    """Cache key of one file: absolute path, size and modification time."""
    return f"{os.path.abspath(record.path)}\t{record.size}\t{record.mtime_ns}"


class EmbeddingStore:
    """Embedding vectors on disk for one backbone signature, written in shards.

    Parameters
    ----------
    folder : path
        Cache root; each backbone signature gets a sub-folder of its own.
    signature : str
        :meth:`Backbone.signature` of the model that computes the vectors.
    """

    def __init__(self, folder: str | os.PathLike, signature: str):
        digest = hashlib.sha1(f"{STORE_VERSION}|{signature}".encode()).hexdigest()[:16]
        self.folder = os.path.join(os.fspath(folder), digest)
        self.signature = signature
        self._next_shard = 0

    def load(self, num_features: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """All cached vectors and all cached failures, by :func:`record_key`.

        A shard that cannot be read (truncated, damaged, empty) or that holds vectors of
        another shape or type than ``num_features`` float32 columns is named in a warning
        and set aside (renamed ``*.damaged``); its images are then computed again.
        """
        vectors: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        shards = sorted(glob.glob(os.path.join(glob.escape(self.folder), "shard-*.npz")))  # a run folder may be runs[2]/
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vecs = data["keys"], data["vectors"]
                    failed_keys, reasons = data["failed_keys"], data["failed_reasons"]
                    problem = _shard_problem(keys, vecs, failed_keys, reasons, num_features)
                    if problem is None:
                        vectors.update(zip(keys.tolist(), vecs))
                        failures.update(zip(failed_keys.tolist(), reasons.tolist()))
            except Exception as exc:  # noqa: BLE001  BadZipFile, EOFError, KeyError, ValueError, OSError...
                problem = f"it cannot be read ({type(exc).__name__})"
            if problem is not None:
                self._set_aside(shard, problem)
        if shards:
            self._next_shard = int(os.path.basename(shards[-1])[6:-4]) + 1
        return vectors, failures

    @staticmethod
    def _set_aside(shard: str, problem: str) -> None:
        aside = shard + ".damaged"
        try:
            os.replace(shard, aside)
            where = f"moved to '{os.path.basename(aside)}'"
        except OSError:
            where = "left in place"
        warnings.warn(f"embedding cache shard '{shard}' is not usable: {problem}; {where}, and its images "
                      "are embedded again", stacklevel=3)

    def add(self, keys: Sequence[str], vectors: np.ndarray, failed: dict[str, str]) -> None:
        """Write one shard of new vectors and failures, atomically."""
        if not keys and not failed:
            return
        os.makedirs(self.folder, exist_ok=True)
        signature_file = os.path.join(self.folder, "signature.txt")
        if not os.path.exists(signature_file):
            with atomic_write(signature_file) as fh:
                fh.write(self.signature + "\n")
        write_npz(
            os.path.join(self.folder, f"shard-{self._next_shard:06d}.npz"),
            keys=np.array(list(keys), dtype=str),
            vectors=np.asarray(vectors, dtype=np.float32),
            failed_keys=np.array(list(failed), dtype=str),
            failed_reasons=np.array(list(failed.values()), dtype=str),
        )
        self._next_shard += 1


def _shard_problem(keys, vectors, failed_keys, reasons, num_features: int | None) -> str | None:
    """What is wrong with a shard's arrays, or None when they can be used."""
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        return f"its vectors are {vectors.dtype} of shape {vectors.shape}, not float32 rows"
    if num_features is not None and vectors.shape[1] != num_features and len(vectors):
        return f"its vectors have {vectors.shape[1]} features, the backbone gives {num_features}"
    if keys.ndim != 1 or len(keys) != len(vectors) or len(failed_keys) != len(reasons):
        return f"it holds {len(keys)} keys for {len(vectors)} vectors"
    if not np.isfinite(vectors).all():
        return "its vectors hold NaN or infinite values"
    return None


@dataclass
class Embeddings:
    """Result of :func:`extract_embeddings`.

    Attributes
    ----------
    vectors : ndarray of shape (n_ok, num_features)
        float32 features of the images that could be read, in input order.
    indices : ndarray of shape (n_ok,)
        Position in the input list of each row of ``vectors``.
    skipped : list of (int, str)
        Input position and reason for every image that could not be read.
    n_reused, n_computed : int
        Vectors taken from the cache and vectors computed in this call.
    seconds : float
        Wall time of the extraction.
    """

    vectors: np.ndarray
    indices: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    n_reused: int = 0
    n_computed: int = 0
    seconds: float = 0.0


def decode_size(backbone: Backbone) -> int:
    """The size a JPEG is decoded at with ``fast_decode``: twice the side the model's
    preprocessing resizes to, so the resize still has every pixel it uses."""
    crop = backbone.data_config.get("crop_pct") or 1.0
    return int(2 * round(backbone.image_size / crop))


def embedding_signature(backbone: Backbone, fast_decode: bool = False) -> str:
    """What the vectors of an image depend on: the backbone and how images are decoded."""
    return backbone.signature() + (f"|draft{decode_size(backbone)}" if fast_decode else "")


class _ImageFiles(Dataset):
    """Decodes and preprocesses images; a failure becomes a reason, not an exception."""

    def __init__(self, paths: Sequence[str], transform, draft_size: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_image(self.paths[i], self.draft_size)), ""
        except Exception as exc:  # any decoder error: report the file and go on
            return i, None, describe_load_error(exc)


def _collate(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, reason) for i, x, reason in batch if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


def extract_embeddings(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    store: EmbeddingStore | None = None,
    flush_every: int = 1024,
    progress: bool = True,
    fast_decode: bool = False,
    flush_seconds: float = 60.0,
) -> Embeddings:
    """Compute (or reuse) one feature vector per image.

    Parameters
    ----------
    records : sequence of ImageRecord
        Images to embed (from :func:`deepclust.data.find_images`).
    backbone : Backbone
        Feature extractor; moved to ``device`` and put in eval mode.
    batch_size : int
    device : str or torch.device
    num_workers : int, optional
        DataLoader worker processes that decode images beside the forward pass;
        ``None``: none on a CPU device (they would compete with the forward pass for
        the same cores: measured in ``benchmarks/embed_throughput.py``), else ``min(4, cpus)``.
    store : EmbeddingStore, optional
        Cache to read from and to write new vectors to.
    flush_every : int
        Write a shard to ``store`` after this many new images, bounding the work an
        interruption can lose.
    flush_seconds : float
        Also write a shard when this much time has passed since the last one, so a hard
        kill (SIGKILL, the OOM killer) loses at most about this much work. A stop by
        Ctrl-C or SIGTERM loses nothing: the vectors computed so far are written first.
    progress : bool
        Show a progress bar.
    fast_decode : bool
        Decode JPEGs at a reduced size (:func:`decode_size`, PIL's draft mode): measured
        7.7 times faster on a 12-MP photo, embeddings at cosine 0.9998 of a full decode.
        ``store`` must then be made with :func:`embedding_signature` ``(backbone, True)``.

    Returns
    -------
    Embeddings
    """
    start = time.perf_counter()
    keys = [record_key(r) for r in records]
    cached, cached_failures = store.load(backbone.num_features) if store is not None else ({}, {})
    vectors: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    todo = []
    for i, key in enumerate(keys):
        if key in cached:
            vectors[i] = cached[key]
        elif key in cached_failures:
            skipped[i] = cached_failures[key]
        else:
            todo.append(i)
    n_reused = len(vectors)
    if store is not None and (n_reused or len(skipped)) and todo:
        logging.getLogger("deepclust").info(
            "resuming: %d image(s) taken from the cache in '%s', %d to embed", n_reused + len(skipped),
            store.folder, len(todo))

    if todo:
        device = torch.device(device)
        if num_workers is None:
            num_workers = 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)
        backbone = backbone.to(device).eval()
        loader = DataLoader(
            _ImageFiles([records[i].path for i in todo], backbone.transform(), decode_size(backbone) if fast_decode else None),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        pending_keys: list[str] = []
        pending_vectors: list[np.ndarray] = []
        pending_failed: dict[str, str] = {}

        last_flush = [time.monotonic()]
        cache = [store]  # None once writing to it failed: the run goes on without it

        def flush() -> None:
            if cache[0] is not None and (pending_keys or pending_failed):
                try:
                    cache[0].add(pending_keys, np.stack(pending_vectors) if pending_vectors else
                                 np.zeros((0, backbone.num_features), np.float32), pending_failed)
                except OSError as exc:  # a full disk: keep the vectors in memory, stop caching
                    warnings.warn(f"cannot write the embedding cache in '{cache[0].folder}' ({exc.strerror or exc}); "
                                  "going on without it: an interruption now loses the images not yet cached",
                                  stacklevel=2)
                    cache[0] = None
            pending_keys.clear()
            pending_vectors.clear()
            pending_failed.clear()
            last_flush[0] = time.monotonic()

        bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
        try:
            with torch.inference_mode():
                for batch_positions, images, failed in loader:
                    for pos, reason in failed:
                        i = todo[pos]
                        skipped[i] = reason
                        pending_failed[keys[i]] = reason
                    if images is not None:
                        feats = backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
                        for pos, vec in zip(batch_positions, feats):
                            i = todo[pos]
                            vectors[i] = vec
                            pending_keys.append(keys[i])
                            pending_vectors.append(vec)
                    bar.update(len(batch_positions) + len(failed))
                    if (len(pending_keys) + len(pending_failed) >= flush_every
                            or time.monotonic() - last_flush[0] >= flush_seconds):
                        flush()
        finally:
            # Also on Ctrl-C or an error: keep every vector computed so far.
            flush()
            bar.close()

    order = np.array(sorted(vectors), dtype=np.int64)
    dim = backbone.num_features
    stacked = np.stack([vectors[i] for i in order]).astype(np.float32) if len(order) else np.zeros((0, dim), np.float32)
    return Embeddings(
        vectors=stacked,
        indices=order,
        skipped=sorted(skipped.items()),
        n_reused=n_reused,
        n_computed=len(todo) - sum(1 for i in todo if i in skipped),
        seconds=time.perf_counter() - start,
    )

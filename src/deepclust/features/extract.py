"""THE one embedding path: image files in, feature vectors out, through the run's cache.

:func:`embed_records` is what every job calls (``cluster``, ``predict``, ``embed``'s
partitions, C2M's labelled images): it runs a
:class:`~deepclust.features.backbones.Backbone` over image files with
:func:`extract_embeddings`, first reusing every vector already in the cache for the same
file (same path, size and modification time) and the same :func:`embedding_signature`
(backbone name, weights, preprocessing, decoding), then writing new vectors in shards as
it goes, so an interrupted extraction resumes where it stopped. Files that cannot be
decoded are reported and skipped, never fatal.
"""

from __future__ import annotations

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

from deepclust.data.folders import ImageRecord, describe_load_error, load_image
from deepclust.errors import DeepclustError
from deepclust.features.backbones import Backbone
from deepclust.features.cache import EmbeddingStore, cache_limit, prune_cache, record_key
from deepclust.features.runtime import CALIBRATION_IMAGES, forward_for


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
    runtime : str or None
        What ran the forward pass (``torch`` or ``onnxruntime``); None when nothing was computed.
    """

    vectors: np.ndarray
    indices: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    n_reused: int = 0
    n_computed: int = 0
    seconds: float = 0.0
    runtime: str | None = None

    def kept(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """The records of the rows of ``vectors`` (the images that could be read)."""
        return [records[i] for i in self.indices]

    def skipped_paths(self, records: Sequence[ImageRecord]) -> list[tuple[str, str]]:
        """(path, reason) of every image that could not be read, as ``skipped.csv`` lists them."""
        return [(records[i].path, reason) for i, reason in self.skipped]


def default_workers(device: torch.device, cpus: int | None = None) -> int:
    """Decode worker processes beside the forward pass, by default. On a CPU of up to 4
    cores none: they would take the cores the forward pass uses (on 2 cores, 0 workers ran
    Lite0 with ONNX Runtime at 116 img/s, 1 and 2 workers at 96-97; docs/scale.md). Above,
    one per 4 cores, at most 8: one process decodes a 224-px pipeline's images at about 150
    a second, which the forward pass outruns on 8 or more cores. On a GPU, min(4, cores)."""
    cpus = cpus or os.cpu_count() or 1
    if torch.device(device).type != "cpu":
        return min(4, cpus)
    return 0 if cpus <= 4 else min(8, cpus // 4)


def decode_size(backbone: Backbone) -> int:
    """The size a JPEG is decoded at with ``fast_decode``: twice the side the model's
    preprocessing resizes to, so the resize still has every pixel it uses."""
    crop = backbone.data_config.get("crop_pct") or 1.0
    return int(2 * round(backbone.image_size / crop))


def embedding_signature(backbone: Backbone, fast_decode: bool = False, precision: str = "fp32") -> str:
    """What the vectors of an image depend on: the backbone, how images are decoded, and the
    precision of the forward pass where it is not fp32."""
    return (backbone.signature() + (f"|draft{decode_size(backbone)}" if fast_decode else "")
            + (f"|{precision}" if precision != "fp32" else ""))


def _calibration_images(records, backbone: Backbone, draft_size: int | None, n: int = CALIBRATION_IMAGES):
    """A function giving the first ``n`` readable images of ``records``, decoded and
    preprocessed as the embedding does: what an int8 model is calibrated on (called only
    when one is made)."""

    def images() -> np.ndarray:
        files, out = _ImageFiles([r.path for r in records], backbone.transform(), draft_size), []
        for i in range(len(files)):
            _, image, _ = files[i]  # an unreadable file comes back as None, as in the embedding
            if image is not None:
                out.append(image.numpy())
            if len(out) == n:
                break
        if not out:
            raise DeepclustError("no readable image to calibrate the int8 model on")
        return np.stack(out)

    return images


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


def prefetched(batches, depth: int = 2):
    """Iterate ``batches`` with the next ones decoded by a thread meanwhile: with no decode
    worker processes, the decoding of batch i+1 overlaps the forward pass of batch i (ONNX
    Runtime and PIL's decoder release the GIL). An error in the thread is raised here."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def fill():
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        items.put(("ok", batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("ok", done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=fill, name="deepclust-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "error":
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()


def _compute(records, keys, todo, backbone: Backbone, vectors: dict, skipped: dict, store, batch_size: int, device,
             num_workers, flush_every: int, flush_seconds: float, progress: bool, fast_decode: bool,
             runtime: str = "torch", precision: str = "fp32") -> str:
    """Embed ``records[todo]`` into ``vectors`` (failures into ``skipped``), keeping the new
    vectors in ``store`` as they come (see :func:`extract_embeddings`); returns the runtime used."""
    device = torch.device(device)
    if num_workers is None:
        num_workers = default_workers(device)
    backbone = backbone.to(device).eval()
    draft = decode_size(backbone) if fast_decode else None
    forward, used = forward_for(backbone, runtime, device, precision, _calibration_images(records, backbone, draft))
    loader = DataLoader(
        _ImageFiles([records[i].path for i in todo], backbone.transform(), draft),
        batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    pending = _PendingShard(store, backbone.num_features, flush_every, flush_seconds)
    bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            # decoding beside ONNX Runtime: 1.11x on 2 cores (the pipeline at 0.81 of its bare
            # forward); beside PyTorch eager (0.92x) and OpenVINO (0.63 against 0.81 of its bare
            # forward), which keep every core busy, slower, so not there
            overlap = num_workers == 0 and used.startswith("onnxruntime")
            for batch_positions, images, failed in (prefetched(loader) if overlap else loader):
                for pos, reason in failed:
                    skipped[todo[pos]] = reason
                    pending.failed[keys[todo[pos]]] = reason
                if images is not None:
                    feats = forward(images.to(device, non_blocking=True)).float().cpu().numpy()
                    for pos, vec in zip(batch_positions, feats):
                        vectors[todo[pos]] = vec
                        pending.add(keys[todo[pos]], vec)
                bar.update(len(batch_positions) + len(failed))
                if pending.due():
                    pending.flush()
    finally:
        pending.flush()  # also on Ctrl-C, SIGTERM or an error: keep every vector computed so far
        bar.close()
    return used


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
    runtime: str = "torch",
    precision: str = "fp32",
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
        ``None``: :func:`default_workers` (none on a CPU of up to 4 cores, where they would
        compete with the forward pass for the same cores; more on larger CPUs and GPUs).
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
        Decode JPEGs at a reduced size (:func:`decode_size`, PIL's draft mode): several
        times faster for camera photos, embeddings nearly those of a full decode.
        ``store`` must then be made with :func:`embedding_signature` ``(backbone, True)``.
    runtime : {"torch", "onnxruntime", "auto"}
        What runs the forward pass (:func:`deepclust.features.runtime.forward_for`); the
        features agree within about 1e-5, so the cache serves every runtime.
    precision : {"fp32", "int8", "bf16"}
        Reduced precision only on request (:mod:`deepclust.features.runtime`); ``store``
        must then be made with :func:`embedding_signature` ``(backbone, fast_decode, precision)``.

    Returns
    -------
    Embeddings
    """
    start = time.perf_counter()
    keys = [record_key(r) for r in records]
    vectors, skipped, todo = _split_cached(keys, store, backbone.num_features)
    n_reused = len(vectors)
    used = None
    if todo:
        used = _compute(records, keys, todo, backbone, vectors, skipped, store, batch_size, device, num_workers,
                        flush_every, flush_seconds, progress, fast_decode, runtime, precision)
    order = np.array(sorted(vectors), dtype=np.int64)
    dim = backbone.num_features
    stacked = np.stack([vectors[i] for i in order]).astype(np.float32) if len(order) else np.zeros((0, dim), np.float32)
    return Embeddings(vectors=stacked, indices=order, skipped=sorted(skipped.items()), n_reused=n_reused,
                      n_computed=len(todo) - sum(1 for i in todo if i in skipped), seconds=time.perf_counter() - start,
                      runtime=used)


def _split_cached(keys: list[str], store: EmbeddingStore | None, num_features: int
                  ) -> tuple[dict[int, np.ndarray], dict[int, str], list[int]]:
    """(vectors, failures) the cache already holds for ``keys``, by position, and the
    positions still to embed; says so when a run resumes."""
    cached, cached_failures = store.load(num_features) if store is not None else ({}, {})
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
    if store is not None and (vectors or skipped) and todo:
        logging.getLogger("deepclust").info("resuming: %d image(s) taken from the cache in '%s', %d to embed",
                                            len(vectors) + len(skipped), store.folder, len(todo))
    return vectors, skipped, todo


class _PendingShard:
    """Vectors and failures computed since the last shard; written to the cache every
    ``flush_every`` images or ``flush_seconds``. If the cache cannot be written (a full
    disk), the run goes on without it and says so: the vectors stay in memory."""

    def __init__(self, store: EmbeddingStore | None, num_features: int, flush_every: int, flush_seconds: float):
        self.store, self.num_features = store, num_features
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.keys: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.failed: dict[str, str] = {}
        self.last = time.monotonic()

    def add(self, key: str, vector: np.ndarray) -> None:
        self.keys.append(key)
        self.vectors.append(vector)

    def due(self) -> bool:
        return (len(self.keys) + len(self.failed) >= self.flush_every
                or time.monotonic() - self.last >= self.flush_seconds)

    def flush(self) -> None:
        if self.store is not None and (self.keys or self.failed):
            try:
                self.store.add(self.keys, np.stack(self.vectors) if self.vectors else
                               np.zeros((0, self.num_features), np.float32), self.failed)
            except OSError as exc:
                warnings.warn(f"cannot write the embedding cache in '{self.store.folder}' ({exc.strerror or exc}); "
                              "going on without it: an interruption now loses the images not yet cached", stacklevel=3)
                self.store = None
        self.keys, self.vectors, self.failed = [], [], {}
        self.last = time.monotonic()


def embed_records(records: Sequence[ImageRecord], backbone: Backbone, cache: str | os.PathLike | None = None,
                  batch_size: int = 32, device: str | torch.device = "cpu", num_workers: int | None = None,
                  progress: bool = True, fast_decode: bool = False, runtime: str = "auto",
                  also: Sequence[str | os.PathLike] = (), precision: str = "fp32") -> Embeddings:
    """Embed ``records`` with ``backbone``, reusing and filling the cache folder ``cache``
    (:func:`~deepclust.features.cache.embedding_cache`: the user's shared cache, or
    ``--cache DIR``; None: no cache) and reading the older caches ``also`` (a run's own
    ``cache/`` from before the cache was shared). The cache key is
    :func:`embedding_signature`, the same for every job, so every run, ``predict`` and
    ``select`` reuse each other's vectors; above the size limit the least recently used
    signatures are removed. ``runtime``: ``auto`` runs the forward pass with ONNX Runtime
    on a CPU where it can (:mod:`deepclust.features.runtime`)."""
    store = (EmbeddingStore(cache, embedding_signature(backbone, fast_decode, precision), also)
             if cache is not None else None)
    emb = extract_embeddings(records, backbone, batch_size=batch_size, device=device, num_workers=num_workers,
                             store=store, progress=progress, fast_decode=fast_decode, runtime=runtime,
                             precision=precision)
    if store is not None:
        removed = prune_cache(store.root, cache_limit(), keep=[store.folder])
        if removed:
            logging.getLogger("deepclust").info("embedding cache over its limit (DEEPCLUST_CACHE_LIMIT): removed %d "
                                                "least recently used backbone folder(s)", len(removed))
    return emb

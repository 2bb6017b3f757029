"""The embedding store: vectors of a large image collection on disk, written partition by partition.

A store (a folder) holds::

    STORE/
      store.json       backbone, weights, preprocessing, signature, sizes; "complete" when done
      index.csv        row, path, folder, size, mtime_ns   one row per image, in store order
      vectors.zarr     float32 (n_images, n_features), one zarr chunk per partition;
                       rows of unreadable images are NaN
      parts/           part-NNNNNN.json per finished partition (its failures and timing)
      skipped.csv      path, reason   (written when every partition is done)

``dask.array.from_zarr("STORE/vectors.zarr")`` reads the vectors as a dask array.
A partition is written to its own chunk, then marked done by its ``parts/`` file, so
running the same command again after a worker or the client died redoes only the
unmarked partitions.

``deepclust embed`` (:mod:`deepclust.jobs.embed`) fills a store, each partition by
:func:`embed_partition` (on a Dask worker or here); :mod:`deepclust.cluster.at_scale`
clusters one block by block.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.io import read_csv, write_csv, write_json

log = logging.getLogger("deepclust")

STORE_FORMAT = "deepclust-embedding-store/1"
VECTORS = "vectors.zarr"


def open_vectors(path: str, mode: str = "r"):
    """The zarr array of a store's vectors (``STORE/vectors.zarr``)."""
    return _zarr().open_array(path, mode=mode)


def _zarr():
    try:
        import zarr
    except ImportError as exc:
        raise DeepclustError(f"embedding stores need zarr: pip install 'zarr>=3' ({exc})") from None
    return zarr


# ----------------------------------------------------------------------------------------------
# The store


@dataclass
class EmbeddingTable:
    """An embedding store opened for reading (see the module docstring).

    Attributes
    ----------
    folder : str
    info : dict
        store.json.
    paths, folders : list of str
        Every image of the store, in row order (also the unreadable ones).
    valid : ndarray of bool, shape (n_images,)
        Rows that hold a vector (False: the image could not be read).
    skipped : list of (str, str)
        Path and reason of every unreadable image.
    """

    folder: str
    info: dict
    paths: list[str]
    folders: list[str]
    valid: np.ndarray
    skipped: list[tuple[str, str]]

    @property
    def vectors_path(self) -> str:
        return os.path.join(self.folder, VECTORS)

    @property
    def n_features(self) -> int:
        return int(self.info["num_features"])

    def blocks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` rows of every block (a partition, one zarr chunk)."""
        n, size = len(self.paths), int(self.info["partition_size"])
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def array(self):
        """All rows as a dask array (NaN rows included: select them with ``valid``)."""
        import dask.array as da

        return da.from_zarr(self.vectors_path)

    def read(self) -> np.ndarray:
        """The vectors of the valid rows, in row order, as one in-memory array."""
        return np.asarray(_zarr().open_array(self.vectors_path, mode="r")[:], dtype=np.float32)[self.valid]


def open_store(folder: str | os.PathLike) -> EmbeddingTable:
    """Open a complete embedding store written by ``deepclust embed``."""
    folder = os.fspath(folder)
    info_path = os.path.join(folder, "store.json")
    if not os.path.isfile(info_path):
        raise DeepclustError(f"'{folder}' is not an embedding store (no store.json); make one with "
                             "`deepclust embed IMAGES --out STORE`")
    with open(info_path, encoding="utf-8") as fh:
        info = json.load(fh)
    if info.get("format") != STORE_FORMAT:
        raise DeepclustError(f"'{folder}' is not an embedding store of this deepclust ({info.get('format')!r})")
    if not info.get("complete"):
        done = len(finished_parts(folder))
        raise DeepclustError(f"the embedding store '{folder}' is unfinished ({done} of {info['n_partitions']} "
                             "partitions); run the same `deepclust embed` command again to finish it")
    rows = read_csv(os.path.join(folder, "index.csv"))
    skipped = [(r["path"], r["reason"]) for r in read_csv(os.path.join(folder, "skipped.csv"))]
    parts = finished_parts(folder)
    missing = missing_chunks(folder, parts)
    if missing:
        raise DeepclustError(f"the embedding store '{folder}' has lost the vectors of {len(missing)} partition(s) "
                             f"({', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); run the same "
                             "`deepclust embed` command again to recompute them")
    valid = np.ones(len(rows), dtype=bool)
    for part in parts.values():
        for row, _ in part["failed"]:
            valid[row] = False
    return EmbeddingTable(folder, info, [r["path"] for r in rows], [r["folder"] for r in rows], valid, skipped)


def missing_chunks(folder: str, parts: dict[int, dict]) -> list[int]:
    """Finished partitions whose chunk of vectors is gone from disk (it would read back as
    NaN). A partition whose every image failed may have none: zarr skips all-NaN chunks."""
    z = _zarr().open_array(os.path.join(folder, VECTORS), mode="r")
    missing = []
    for part, record in sorted(parts.items()):
        if len(record["failed"]) == record["stop"] - record["start"]:
            continue
        key = z.metadata.encode_chunk_key((part, 0))
        if not os.path.isfile(os.path.join(folder, VECTORS, *key.split("/"))):
            missing.append(part)
    return missing


def part_file(folder: str, part: int) -> str:
    return os.path.join(folder, "parts", f"part-{part:06d}.json")


def finished_parts(folder: str) -> dict[int, dict]:
    parts = {}
    for path in glob.glob(os.path.join(glob.escape(folder), "parts", "part-*.json")):  # e.g. store[2]/
        with open(path, encoding="utf-8") as fh:
            parts[int(os.path.basename(path)[5:-5])] = json.load(fh)
    return parts


def write_store(folder: str | os.PathLike, vectors: np.ndarray, paths: Sequence[str] | None = None,
                folders: Sequence[str] | None = None, partition_size: int = 65_536, source: str = "array") -> EmbeddingTable:
    """An embedding store of vectors computed elsewhere (another tool, a benchmark).

    ``paths`` default to ``row-000000``...; ``folders`` (true classes, if any) to "".
    """
    folder = os.fspath(folder)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not len(vectors):
        raise DeepclustError(f"vectors must be a non-empty (n, d) array; got shape {vectors.shape}")
    if os.path.exists(os.path.join(folder, "store.json")):
        raise DeepclustError(f"'{folder}' already holds an embedding store; choose another folder")
    n, d = vectors.shape
    paths = list(paths) if paths is not None else [f"row-{i:09d}" for i in range(n)]
    folders = list(folders) if folders is not None else [""] * n
    info = new_store_info(source, {"name": source}, d, n, partition_size)
    create_store(folder, info, [(p, f, "", "") for p, f in zip(paths, folders)])
    z = _zarr().open_array(os.path.join(folder, VECTORS), mode="r+")
    for part, start in enumerate(range(0, n, partition_size)):
        stop = min(start + partition_size, n)
        z[start:stop] = vectors[start:stop]
        write_json(part_file(folder, part), {"start": start, "stop": stop, "failed": [], "seconds": 0.0})
    finish_store(folder, info, [])
    return open_store(folder)


def new_store_info(images: str, backbone: dict, n_features: int, n_images: int, partition_size: int) -> dict:
    return {"format": STORE_FORMAT, "images": images, "backbone": backbone, "num_features": int(n_features),
            "n_images": int(n_images), "partition_size": int(partition_size),
            "n_partitions": -(-int(n_images) // int(partition_size)), "complete": False}


def create_store(folder: str, info: dict, index_rows: Sequence[tuple]) -> None:
    os.makedirs(os.path.join(folder, "parts"), exist_ok=True)
    write_csv(os.path.join(folder, "index.csv"), ["row", "path", "folder", "size", "mtime_ns"],
              ([i, *row] for i, row in enumerate(index_rows)))
    _zarr().create_array(store=os.path.join(folder, VECTORS), shape=(info["n_images"], info["num_features"]),
                         chunks=(info["partition_size"], info["num_features"]), dtype="float32",
                         fill_value=float("nan"), compressors=None, overwrite=True)  # float features barely
    # compress, and decompressing would cost more than the k-means pass over a chunk
    write_json(os.path.join(folder, "store.json"), info)  # last: a store.json means the rest exists


def finish_store(folder: str, info: dict, skipped: list[tuple[str, str]]) -> None:
    write_csv(os.path.join(folder, "skipped.csv"), ["path", "reason"], skipped)
    write_json(os.path.join(folder, "store.json"), {**info, "complete": True})


# ----------------------------------------------------------------------------------------------
# Embedding

_WORKER_BACKBONES: dict[str, Any] = {}  # per process: each worker loads a backbone once


def _worker_backbone(spec: dict):
    from deepclust.features.backbones import create_backbone  # deferred: clustering a store needs no torch

    key = json.dumps(spec, sort_keys=True)
    if key not in _WORKER_BACKBONES:
        _WORKER_BACKBONES.clear()
        _WORKER_BACKBONES[key] = create_backbone(spec["name"], weights=spec["weights"], image_size=spec["image_size"],
                                                   pooling=spec.get("pooling"))
    return _WORKER_BACKBONES[key]


def embed_partition(task: dict, spec: dict, settings: dict) -> dict:
    """Embed one partition (a task: run by a worker, or by this process) and mark it done.

    ``task``: ``{"folder", "part", "start", "records"}``; ``spec``: the backbone
    (name, weights, image_size); ``settings``: batch_size, device.
    """
    import torch  # deferred: a worker that clusters a store never loads it

    from deepclust.features.extract import embed_records  # deferred, as the backbone above

    t0 = time.perf_counter()
    backbone = _worker_backbone(spec)
    name = settings["device"]
    if name == "auto":  # this worker's GPU when it has one (dask-cuda gives each worker its own)
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device(name)
    records = task["records"]
    emb = embed_records(records, backbone, None, batch_size=settings["batch_size"], device=device, num_workers=0,
                        progress=False, fast_decode=spec.get("fast_decode", False))
    out = np.full((len(records), backbone.num_features), np.nan, dtype=np.float32)
    out[emb.indices] = emb.vectors
    start = task["start"]
    z = _zarr().open_array(os.path.join(task["folder"], VECTORS), mode="r+")
    z[start:start + len(records)] = out
    result = {"start": start, "stop": start + len(records),
              "failed": [[start + i, reason] for i, reason in emb.skipped],
              "seconds": round(time.perf_counter() - t0, 3), "worker": f"{socket.gethostname()}:{os.getpid()}",
              "device": str(device), "threads": torch.get_num_threads()}
    write_json(part_file(task["folder"], task["part"]), result)
    return result

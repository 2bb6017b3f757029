"""The embedding cache: vectors on disk, by file and backbone, written in shards.

One cache serves every run, ``predict`` and ``select`` on the machine: the user-level
``embeddings/`` folder (:func:`embedding_cache`; ``--cache DIR`` for another). It holds one
sub-folder per embedding signature (the backbone's name, weights and preprocessing, and
how images are decoded); each shard is an ``.npz`` of keys (absolute path, size,
modification time), vectors and failures, named by its writer (process and a random token) so
that two jobs can fill one folder at once. A job reuses every vector of the same file and signature,
whichever job computed it, and an interrupted extraction resumes. Above its size limit
(``DEEPCLUST_CACHE_LIMIT``, default 20G) the signatures used least recently are removed
first; ``deepclust cache`` lists and clears it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import shutil
import time
import warnings
from typing import Sequence

import numpy as np

from deepclust.data.folders import ImageRecord
from deepclust.errors import DeepclustError
from deepclust.io import atomic_write, write_npz

STORE_VERSION = 1
DEFAULT_LIMIT = "20G"
_USED = "last-used"  # touched by every job that reads or writes a signature's folder
_SHARD = re.compile(r"shard-(\d+)(?:-[0-9a-f]+)*\.npz$")


def cache_root() -> str:
    """The user-level cache folder: ``DEEPCLUST_CACHE``, else ``$XDG_CACHE_HOME/deepclust``,
    else ``~/.cache/deepclust``."""
    if os.environ.get("DEEPCLUST_CACHE"):
        return os.environ["DEEPCLUST_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deepclust")


def embedding_cache(folder: str | os.PathLike | None = None) -> str:
    """The embedding cache folder: ``folder`` (``--cache DIR``), else ``embeddings/`` in
    :func:`cache_root`."""
    return os.fspath(folder) if folder else os.path.join(cache_root(), "embeddings")


def parse_size(text: str) -> int:
    """Bytes of ``"20G"``, ``"500M"``, ``"1.5T"`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text), re.I)
    if not match:
        raise DeepclustError(f"cache size limit {text!r} is not a size such as 20G, 500M or 1T")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def cache_limit() -> int:
    """The cache's size limit in bytes (``DEEPCLUST_CACHE_LIMIT``, default 20G)."""
    return parse_size(os.environ.get("DEEPCLUST_CACHE_LIMIT") or DEFAULT_LIMIT)


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
    also : sequence of paths
        Further cache roots read (never written), e.g. the ``cache/`` of a run made before
        the cache was shared.
    """

    def __init__(self, folder: str | os.PathLike, signature: str, also: Sequence[str | os.PathLike] = ()):
        digest = hashlib.sha1(f"{STORE_VERSION}|{signature}".encode()).hexdigest()[:16]
        self.root = os.fspath(folder)
        self.folder = os.path.join(self.root, digest)
        self.signature = signature
        self._also = [os.path.join(os.fspath(a), digest) for a in also if os.path.abspath(a) != os.path.abspath(folder)]
        self._next_shard = 0
        self._writer = f"{os.getpid()}-{secrets.token_hex(3)}"  # two jobs may fill one folder at once

    def load(self, num_features: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """All cached vectors and all cached failures, by :func:`record_key`.

        A shard that cannot be read (truncated, damaged, empty) or that holds vectors of
        another shape or type than ``num_features`` float32 columns is named in a warning
        and set aside (renamed ``*.damaged``); its images are then computed again.
        """
        vectors: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        shards = sorted(glob.glob(os.path.join(glob.escape(self.folder), "shard-*.npz")))  # a run folder may be runs[2]/
        older = [s for a in self._also for s in sorted(glob.glob(os.path.join(glob.escape(a), "shard-*.npz")))]
        own: set[str] = set()  # the keys this store's own shards hold
        for shard in older + shards:
            mark = shard not in older
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vecs = data["keys"], data["vectors"]
                    failed_keys, reasons = data["failed_keys"], data["failed_reasons"]
                    problem = _shard_problem(keys, vecs, failed_keys, reasons, num_features)
                    if problem is None:
                        vectors.update(zip(keys.tolist(), vecs))
                        failures.update(zip(failed_keys.tolist(), reasons.tolist()))
                        if mark:
                            own.update(keys.tolist())
                            own.update(failed_keys.tolist())
            except Exception as exc:  # noqa: BLE001  BadZipFile, EOFError, KeyError, ValueError, OSError...
                problem = f"it cannot be read ({type(exc).__name__})"
            if problem is not None:
                self._set_aside(shard, problem)
        numbers = [int(m.group(1)) for m in map(_SHARD.search, shards) if m]
        if numbers:
            self._next_shard = max(numbers) + 1
        self._adopt({k: v for k, v in vectors.items() if k not in own}, {k: v for k, v in failures.items() if k not in own})
        self.touch()
        return vectors, failures

    def _adopt(self, vectors: dict[str, np.ndarray], failures: dict[str, str]) -> None:
        """Copy what only the older caches held into this one (once), so it outlives them."""
        if not vectors and not failures:
            return
        try:
            self.add(list(vectors), np.stack(list(vectors.values())) if vectors else np.zeros((0, 0), np.float32),
                     failures)
        except OSError:  # a cache that cannot be written is still read
            pass

    def touch(self) -> None:
        """Mark the signature's folder used now (the size limit removes the least recent)."""
        if os.path.isdir(self.folder):
            try:
                with open(os.path.join(self.folder, _USED), "a"):
                    pass
                os.utime(os.path.join(self.folder, _USED))
            except OSError:  # a read-only cache is still read
                pass

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
            os.path.join(self.folder, f"shard-{self._next_shard:06d}-{self._writer}.npz"),
            keys=np.array(list(keys), dtype=str),
            vectors=np.asarray(vectors, dtype=np.float32),
            failed_keys=np.array(list(failed), dtype=str),
            failed_reasons=np.array(list(failed.values()), dtype=str),
        )
        self._next_shard += 1
        self.touch()


def cache_entries(root: str | os.PathLike, count: bool = True) -> list[dict]:
    """One row per signature folder of the cache ``root``: ``folder``, ``signature``,
    ``vectors`` (None without ``count``: counting opens every shard, so the size limit, which
    runs after every embedding, leaves it out), ``bytes`` and ``last_used`` (seconds since the epoch),
    most recent first."""
    rows = []
    for folder in glob.glob(os.path.join(glob.escape(os.fspath(root)), "*", "")):
        folder = folder.rstrip(os.sep)
        try:
            with open(os.path.join(folder, "signature.txt"), encoding="utf-8") as fh:
                signature = fh.read().strip()
        except OSError:
            continue  # not a signature's folder
        files = [os.path.join(folder, f) for f in os.listdir(folder)]
        vectors = 0 if count else None
        for shard in (f for f in files if count and _SHARD.search(f)):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    vectors += len(data["keys"])
            except Exception:  # noqa: BLE001 - a damaged shard is counted as none
                pass
        used = max((os.path.getmtime(f) for f in files), default=os.path.getmtime(folder))
        rows.append({"folder": folder, "signature": signature, "vectors": vectors,
                     "bytes": sum(os.path.getsize(f) for f in files if os.path.isfile(f)), "last_used": used})
    return sorted(rows, key=lambda r: -r["last_used"])


def prune_cache(root: str | os.PathLike, limit: int, keep: Sequence[str] = ()) -> list[dict]:
    """Remove the least recently used signature folders of ``root`` until it holds at most
    ``limit`` bytes, never one of ``keep``; returns the removed rows."""
    rows = cache_entries(root, count=False)
    total = sum(r["bytes"] for r in rows)
    removed, kept = [], {os.path.abspath(k) for k in keep}
    for row in reversed(rows):  # least recent first
        if total <= limit:
            break
        if os.path.abspath(row["folder"]) in kept:
            continue
        shutil.rmtree(row["folder"], ignore_errors=True)
        total -= row["bytes"]
        removed.append(row)
    return removed


def clear_cache(root: str | os.PathLike, older_than_days: float | None = None) -> list[dict]:
    """Remove every signature folder of ``root`` (or those unused for ``older_than_days``)."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else float("inf")
    removed = [r for r in cache_entries(root) if r["last_used"] < cutoff]
    for row in removed:
        shutil.rmtree(row["folder"], ignore_errors=True)
    return removed


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

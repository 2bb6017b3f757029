"""The per-run embedding cache: vectors on disk, by file and backbone, written in shards.

A run folder's ``cache/`` holds one sub-folder per embedding signature (the backbone's
name, weights and preprocessing, and how images are decoded); each shard is an ``.npz``
of keys (absolute path, size, modification time), vectors and failures. A run reuses
every vector of the same file and signature, and an interrupted extraction resumes.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from typing import Sequence

import numpy as np

from deepclust.data.folders import ImageRecord
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

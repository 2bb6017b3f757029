"""The one way deepclust writes and reads its checkpoint files, safe to load from anywhere,
and the one format of a resumable run's state (:class:`RunCheckpoint`).

Checkpoints travel: a colleague's run folder, a downloaded model, a shared disk. A pickle
can run any code while it is read, so every file deepclust loads goes through
``torch.load(..., weights_only=True)``, which admits only tensors and plain values (dicts,
lists, tuples, numbers, strings). What deepclust saves is made of those alone: numpy
arrays become tensors and numpy scalars Python numbers (:func:`to_plain`).
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.io import atomic_write


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers, recursively
    through dicts, lists and tuples, so that ``weights_only`` loading accepts it."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (tensors and plain values; numpy converted) atomically."""
    import torch

    with atomic_write(path, "wb") as fh:
        torch.save(to_plain(payload), fh)


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint", fix: str = "delete it to start over") -> Any:
    """Read a file written by :func:`save_checkpoint` (or any tensors-only PyTorch file).

    A file that holds other Python objects (numpy arrays and scalars aside) is refused
    without running any of it; a
    damaged or truncated one is refused too. Both end in one line naming the file,
    ``what`` it should be, and ``fix``.
    """
    import torch

    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DeepclustError(f"cannot read {what} '{path}' ({exc.strerror or exc}); {fix}") from None
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its legacy pickle
        kind = "empty" if not head else "text" if head.isascii() else "of another format"
        raise DeepclustError(f"{what} '{path}' is not a PyTorch file (it is {kind}); {fix}")
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol of a foreign file: the errors say it
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise DeepclustError(f"cannot read {what} '{path}': the file is damaged ({type(exc).__name__}); "
                                 f"{fix}") from None
        # PyTorch's own message suggests loading it unsafely: never pass that on.
        raise DeepclustError(
            f"refused to load {what} '{path}': it holds Python objects other than tensors and plain values, "
            f"and deepclust never runs code from a file (was it made by another tool, or crafted?); {fix}"
        ) from None
    except Exception as exc:  # noqa: BLE001  zip, EOF and stream errors of a damaged file
        raise DeepclustError(f"cannot read {what} '{path}': the file is damaged or truncated "
                             f"({type(exc).__name__}); {fix}") from None


class RunCheckpoint:
    """``last.pt``: the state a training run resumes from, for every method that resumes
    (fine-tuning, MMDC, IMC-SwAV).

    The file is the method's state plus three entries that decide whether it may be resumed:
    ``format`` (which method's state it is), ``settings`` (what defines the run) and, for
    estimators that train on an array, ``fingerprint`` (of the images).

    Parameters
    ----------
    path : str or None
        The file; None keeps nothing (save does nothing, load finds nothing).
    fmt : str
        The format tag stored in and required of the file, e.g. ``deepclust.mmdc/1``.
    what : str
        The run's name for messages, e.g. ``MMDC``.
    fix : str
        What a user does about a file that cannot be resumed.
    """

    def __init__(self, path: str | os.PathLike | None, fmt: str, what: str,
                 fix: str = "use another checkpoint_dir, or delete it to start over"):
        self.path = None if path is None else os.fspath(path)
        self.fmt, self.what, self.fix = fmt, what, fix

    def save(self, state: dict, settings: dict, fingerprint: str | None = None) -> None:
        """Write ``state`` with the format tag, ``settings`` and ``fingerprint``, atomically."""
        if self.path is None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        save_checkpoint(self.path, {**state, "format": self.fmt, "settings": settings, "fingerprint": fingerprint})

    def load(self, settings: dict, fingerprint: str | None = None, may_change: tuple | frozenset = ()) -> dict | None:
        """The saved state, or None without a file. An error when the file is another
        method's, was trained on other images, or with other ``settings`` (keys in
        ``may_change`` aside: a resumed run may change them)."""
        if self.path is None or not os.path.isfile(self.path):
            return None
        state = load_checkpoint(self.path, f"{self.what} checkpoint", self.fix)
        if not isinstance(state, dict) or state.get("format") != self.fmt:
            raise DeepclustError(f"'{self.path}' is not a {self.what} checkpoint; {self.fix}")
        if fingerprint is not None and state.get("fingerprint") != fingerprint:
            raise DeepclustError(f"'{self.path}' was trained on other images; {self.fix}")
        # "config": the settings of fine-tuning checkpoints written before this shared format
        saved = state.get("settings", state.get("config", {}))
        changed = sorted(k for k in set(saved) | set(settings)
                         if k not in may_change and saved.get(k) != settings.get(k))
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
            raise DeepclustError(f"'{self.path}' was made with other settings ({diff}); resume with the same "
                                 f"settings, or {self.fix}")
        return state


def _numpy_globals() -> list:
    """numpy arrays and scalars, which checkpoints of earlier deepclust versions hold (MMDC's
    labels, numbers in histories). Admitting their constructors runs no code of the file:
    an array's elements still pass the same tensors-and-plain-values unpickler."""
    multiarray = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [multiarray.multiarray._reconstruct, multiarray.multiarray.scalar, np.ndarray, np.dtype, *dtypes]

"""Safe file output: atomic writes, CSV cells a spreadsheet will not run, folder locks.

Every result deepclust writes goes through :func:`atomic_write`: the content is
written to a temporary file in the same folder and renamed over the target only
once it is complete, so an interrupted run never leaves a half-written result.
A command that writes into a folder holds its :func:`lock_folder`, so two commands
never write into one folder at once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import socket
import tempfile
import time
from typing import Any, Iterable, Sequence

import numpy as np

from deepclust.errors import DeepclustError

log = logging.getLogger("deepclust")

UMASK = os.umask(0)  # the process's umask (read by setting it): files get the usual modes
os.umask(UMASK)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; rename it to ``path`` on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; results are meant to be shared
    binary = "b" in mode
    try:
        with open(fd, mode, encoding=None if binary else encoding, newline=None if binary else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(folder: str | os.PathLike, option: str = "--out") -> None:
    """Create ``folder`` if needed and write (then remove) a probe file in it, so a
    read-only or full output is found before any work, not after it."""
    folder = os.fspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".deepclust-probe-")
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise DeepclustError(f"cannot write to '{folder}' ({exc.strerror or exc}); choose another {option} "
                             "or free space there") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=_json_default)
        fh.write("\n")


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def read_json(path: str | os.PathLike, fix: str = "run the command that made the run again") -> Any:
    """A JSON file deepclust wrote or reads (a run's, a model folder's config); a damaged
    one is one clear error naming it and ``fix``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise DeepclustError(f"'{path}' is damaged (not valid JSON: {str(exc).splitlines()[0]}); {fix}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (``=1+2/x.jpg``), or that
    starts with ``'``, gets a leading ``'``, as OWASP advises; numbers stay as they are.
    :func:`read_csv` removes it again, so paths read back unchanged."""
    if isinstance(value, str) and value and (value[0] == "'" or (value.startswith(_FORMULA_START)
                                                                  and not _is_number(value))):
        return "'" + value
    return value


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV file with a header row, atomically; text cells pass :func:`csv_cell`."""
    with atomic_write(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([csv_cell(v) for v in row] for row in rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV file written by :func:`write_csv` into a list of row dicts."""
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: _uncell(v) if isinstance(v, str) else v for k, v in row.items()} for row in csv.DictReader(fh)]


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array as ``.npy``, atomically."""
    with atomic_write(path, "wb") as fh:
        np.save(fh, array)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Save several arrays as ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getvalue())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Lay out a matplotlib figure, write it as PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    plt.close(fig)


LOCK = ".deepclust.lock"


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, what: str = "run folder"):
    """Hold ``folder/.deepclust.lock`` (the holder's pid, host and start time) while a
    command writes into ``folder``; a second command is refused with who holds it. A
    lock left by a process that no longer exists on this host is taken over."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if attempt == 0 and _is_stale(holder, path):
                log.warning("taking over the lock of a deepclust process that no longer runs (%s)",
                            holder or "unreadable lock file")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise DeepclustError(
                f"the {what} '{folder}' is in use by another deepclust command (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}); wait for it to end or choose another folder "
                f"(if no such command runs, delete '{path}')") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _lock_holder(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            holder = json.load(fh)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict, path: str) -> bool:
    """A lock nobody can hold: unreadable, or its process is gone from this host."""
    if not holder or not isinstance(holder.get("pid"), int):
        try:  # unreadable: stale unless it was made a moment ago (its writer may not have written yet)
            return time.time() - os.path.getmtime(path) > 10
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process: it cannot be checked from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

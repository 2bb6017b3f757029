"""Finding images in a folder tree and loading them whatever their mode.

A folder is searched recursively; symbolic links to folders are followed, loops are
detected, and a file reached twice (through a link, or a hard link) is kept once, at
the first path in sorted order. Hidden files and folders (names starting with ``.``)
are left out: they are thumbnails, resource forks and tool state, not photos.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from deepclust.errors import DeepclustError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRecord:
    """One image file found on disk.

    Attributes
    ----------
    path : str
        The path to open: the search root as given, joined with ``relpath``.
    relpath : str
        Path relative to the search root, with ``/`` separators.
    folder : str
        Name of the folder that holds the file (its class when labels come from folders).
    size : int
        File size in bytes.
    mtime_ns : int
        Modification time in nanoseconds.
    """

    path: str
    relpath: str
    folder: str
    size: int
    mtime_ns: int


def find_images(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[ImageRecord]:
    """Find every image under ``root``, recursively, in a deterministic order.

    Parameters
    ----------
    root : path
        Folder to search.
    classes : sequence of str, optional
        Keep only images whose parent folder has one of these names. Every name must
        be found, else the error lists the missing ones.
    exclude : iterable of paths
        Folders not to descend into (for example a run folder placed inside ``root``).

    Returns
    -------
    list of ImageRecord
        Sorted by relative path; each file at most once.

    Raises
    ------
    DeepclustError
        If ``root`` does not exist, is not a folder, holds no images, or lacks classes.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DeepclustError(f"image folder '{root}' does not exist; check the path")
    if not os.path.isdir(root):
        raise DeepclustError(f"'{root}' is a file, not a folder; pass the folder that holds the images")
    excluded = set()
    for path in exclude:
        try:
            st = os.stat(path)
        except OSError:
            continue
        excluded.add((st.st_dev, st.st_ino))

    walk = _FolderWalk(root, excluded)
    walk.folder(root, "")
    records = walk.records
    if walk.loops:
        warnings.warn(f"{len(walk.loops)} folder(s) reached twice through symbolic links were searched once: "
                      + ", ".join(walk.loops[:5]), stacklevel=2)

    if classes is not None:
        wanted = set(classes)
        found = {r.folder for r in records}
        missing = sorted(wanted - found)
        if missing:
            raise DeepclustError(
                f"{len(missing)} of {len(wanted)} classes have no images under '{root}': "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                "check that the folder and the split file belong together"
            )
        records = [r for r in records if r.folder in wanted]

    if not records:
        raise DeepclustError(
            f"'{root}' has no images (looked for {' '.join(IMAGE_EXTENSIONS)} in any case, "
            "in all sub-folders); point to the folder that holds them"
        )
    records.sort(key=lambda r: r.relpath)
    return records


class _FolderWalk:
    """One recursive search of ``root``: each folder and file once (links followed, loops
    noted), hidden names left out, only image extensions kept."""

    def __init__(self, root: str, excluded: set[tuple[int, int]]):
        self.root, self.excluded = root, excluded
        self.records: list[ImageRecord] = []
        self.loops: list[str] = []
        self.seen_dirs: set[tuple[int, int]] = set()
        self.seen_files: set[tuple[int, int]] = set()

    def folder(self, dir_path: str, rel: str) -> None:
        try:
            st = os.stat(dir_path)
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in self.excluded:
            return
        if key in self.seen_dirs:
            self.loops.append(rel or ".")
            return
        self.seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(dir_path), key=lambda e: e.name)
        except OSError as exc:
            warnings.warn(f"cannot list folder '{dir_path}': {exc}; skipped", stacklevel=3)
            return
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            entry_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                continue  # a dangling link
            if is_dir:
                subdirs.append((entry.path, entry_rel))
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                self.file(entry, entry_rel, dir_path)
        for sub_path, sub_rel in subdirs:
            self.folder(sub_path, sub_rel)

    def file(self, entry: os.DirEntry, rel: str, dir_path: str) -> None:
        try:
            fst = entry.stat(follow_symlinks=True)
        except OSError:
            return
        key = (fst.st_dev, fst.st_ino)
        if key in self.seen_files:  # a hard link or a second link to a file already found
            return
        self.seen_files.add(key)
        self.records.append(ImageRecord(path=os.path.join(self.root, *rel.split("/")), relpath=rel,
                                        folder=os.path.basename(dir_path.rstrip(os.sep)) or dir_path,
                                        size=int(fst.st_size), mtime_ns=int(fst.st_mtime_ns)))


def load_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open an image file and return it as an 8-bit RGB :class:`PIL.Image.Image`.

    Grayscale, palette, RGBA / LA (composited on white), CMYK, 16-bit and 32-bit
    integer and float images are converted; EXIF orientation is applied.
    ``draft_size``: a JPEG is decoded directly at 1/2, 1/4 or 1/8 of its size, the
    smallest that keeps both sides at least this long (PIL's draft mode; several times
    faster for camera photos). Other formats ignore it.

    Raises
    ------
    OSError, ValueError, Image.DecompressionBombError
        If the file cannot be decoded or is truncated (the caller reports and skips it).
    """
    path = os.fspath(path)
    # Only a regular file is an image: opening a FIFO named x.jpg would wait forever.
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"not a regular file but {_file_kind(mode)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as img:
            if draft_size:
                img.draft("RGB", (draft_size, draft_size))
            img.load()  # decode now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    for w in caught:  # the decoder's warnings do not say which file: say it
        warnings.warn(f"'{path}': {w.message}", w.category, stacklevel=2)
    return img


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # Stretch by the type's range, not the image's, so dark images stay dark.
        if not np.isfinite(arr).all():  # it would become an all-black image, silently
            raise ValueError(f"{int((~np.isfinite(arr)).sum())} pixel(s) are NaN or infinite")
        if mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        else:
            arr = arr / (65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0)
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def describe_load_error(exc: BaseException) -> str:
    """A short, one-line reason for ``skipped.csv``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

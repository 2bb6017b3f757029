"""Standard benchmarks: as arrays (MNIST, COIL-20) and as class folders (Omniglot).

:func:`load_mnist` and :func:`load_coil20` read the files as distributed into
``(images, labels)`` arrays, for the methods that train on pixels.

Omniglot is distributed as zip files (Lake et al., 2015; github brendenlake/omniglot):
``images_background*.zip`` hold ``<alphabet>/<character>/*.png`` and ``all_runs.zip``
holds 20 one-shot runs of 20 characters of the evaluation alphabets, each character
with one ``training/classNN.png`` and one ``test/itemNN.png`` image.
:func:`prepare_omniglot` unpacks them into class folders named so that the shipped
``omniglot`` split refers to them:

* ``<Alphabet>__<characterNN>/`` for every background character (a file present in two
  zips, as Greek and Latin are, is written once);
* ``eval-runNN-classMM/`` for every character of the one-shot runs, holding its two images.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import zipfile

import numpy as np

from deepclust.data.folders import describe_load_error, find_images, load_image
from deepclust.errors import DeepclustError
from deepclust.io import write_json

_MARKER = ".deepclust-prepared.json"
_DATASETS = ("omniglot",)


def prepare_dataset(name: str, source: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Lay out the benchmark ``name`` from the files in ``source`` as class folders in ``dest``.

    Does nothing when ``dest`` was already prepared from the same files; the folder
    appears complete or not at all (it is filled beside ``dest``, then renamed).
    """
    if name not in _DATASETS:
        raise DeepclustError(f"unknown dataset '{name}' to prepare; known: {', '.join(_DATASETS)}")
    return prepare_omniglot(source, dest)


def prepare_omniglot(source: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Unpack Omniglot's zips from ``source`` into class folders in ``dest``; return ``dest``."""
    source, dest = os.path.expanduser(os.fspath(source)), os.path.expanduser(os.fspath(dest))
    zips = sorted(f for f in os.listdir(source) if re.fullmatch(r"images_background.*\.zip", f)) \
        if os.path.isdir(source) else []
    runs_zip = os.path.join(source, "all_runs.zip")
    if not zips or not os.path.isfile(runs_zip):
        raise DeepclustError(
            f"'{source}' does not hold Omniglot's images_background*.zip and all_runs.zip; "
            "pass the folder of the files from github.com/brendenlake/omniglot (python/)"
        )
    stamp = {f: os.path.getsize(os.path.join(source, f)) for f in zips + ["all_runs.zip"]}
    marker = os.path.join(dest, _MARKER)
    if os.path.isfile(marker):
        import json

        with open(marker, encoding="utf-8") as fh:
            if json.load(fh).get("files") == stamp:
                return dest
        raise DeepclustError(f"'{dest}' was prepared from other Omniglot files; delete it or choose another folder")
    if os.path.exists(dest) and os.listdir(dest):
        raise DeepclustError(f"'{dest}' exists and is not an Omniglot folder prepared by deepclust; choose another folder")

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=".omniglot-")
    try:
        seen: set[str] = set()
        for name in zips:
            with zipfile.ZipFile(os.path.join(source, name)) as zf:
                for member in zf.namelist():
                    parts = member.split("/")
                    if not member.endswith(".png") or len(parts) < 4:
                        continue
                    alphabet, character, filename = parts[-3], parts[-2], parts[-1]
                    folder = f"{alphabet}__{character}"
                    if (folder, filename) in seen:
                        continue  # the same alphabet in two zips
                    seen.add((folder, filename))
                    os.makedirs(os.path.join(work, folder), exist_ok=True)
                    with zf.open(member) as src, open(os.path.join(work, folder, filename), "wb") as out:
                        shutil.copyfileobj(src, out)
        with zipfile.ZipFile(runs_zip) as zf:
            names = set(zf.namelist())
            for labels_file in sorted(n for n in names if n.endswith("class_labels.txt")):
                run = labels_file.split("/")[0]
                for line in zf.read(labels_file).decode().split("\n"):
                    if not line.strip():
                        continue
                    test_item, train_item = line.split()
                    klass = os.path.splitext(os.path.basename(train_item))[0]
                    folder = os.path.join(work, f"eval-{run}-{klass}")
                    os.makedirs(folder, exist_ok=True)
                    for member, filename in ((train_item, f"{run}-training-{klass}.png"),
                                             (test_item, f"{run}-test-{os.path.basename(test_item)}")):
                        with zf.open(member) as src, open(os.path.join(folder, filename), "wb") as out:
                            shutil.copyfileobj(src, out)
        write_json(os.path.join(work, _MARKER), {"dataset": "omniglot", "source": os.path.abspath(source), "files": stamp})
        if os.path.exists(dest):
            os.rmdir(dest)  # empty, checked above
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def _read_idx(path: str, expected_dims: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DeepclustError(f"cannot read '{path}' ({exc}); pass the folder of the MNIST IDX files") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expected_dims:
        raise DeepclustError(f"'{path}' is not an IDX file of unsigned bytes with {expected_dims} dimension(s)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if body.size != int(np.prod(shape)):
        raise DeepclustError(f"'{path}' is truncated: header says {shape}, file holds {body.size} values")
    return body.reshape(shape)


def load_mnist(folder: str | os.PathLike, subset: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from its IDX files (``<subset>-images-idx3-ubyte[.gz]`` and labels).

    Returns
    -------
    images : uint8 ndarray of shape (n, 28, 28)
    labels : int64 ndarray of shape (n,)
    """
    folder = os.path.expanduser(os.fspath(folder))

    def find(kind: str, dims: int) -> np.ndarray:
        for name in (f"{subset}-{kind}-idx{dims}-ubyte.gz", f"{subset}-{kind}-idx{dims}-ubyte"):
            if os.path.isfile(os.path.join(folder, name)):
                return _read_idx(os.path.join(folder, name), dims)
        raise DeepclustError(f"'{folder}' has no {subset}-{kind}-idx{dims}-ubyte[.gz]; pass the folder of the MNIST files")

    images, labels = find("images", 3), find("labels", 1)
    if len(images) != len(labels):
        raise DeepclustError(f"MNIST in '{folder}': {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def load_coil20(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """COIL-20 from ``COIL20.mat`` (``fea``: one 32x32 image per row or column, stored
    column-major; ``gnd``: labels 1-20).

    Returns
    -------
    images : float32 ndarray of shape (1440, 32, 32), values in [0, 1]
    labels : int64 ndarray of shape (1440,), values 0-19
    """
    from scipy.io import loadmat

    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        path = os.path.join(path, "COIL20.mat")
    try:
        mat = loadmat(path)
        fea, gnd = np.asarray(mat["fea"]), np.asarray(mat["gnd"]).ravel()
    except (OSError, ValueError, KeyError) as exc:
        raise DeepclustError(f"cannot read COIL-20 from '{path}' ({type(exc).__name__}); pass COIL20.mat") from None
    if fea.shape[0] != len(gnd):  # some copies store one image per column
        fea = fea.T
    if fea.shape != (len(gnd), 1024):
        raise DeepclustError(f"'{path}': fea has shape {fea.shape}; expected one 32x32 image per sample")
    images = fea.reshape(-1, 32, 32).transpose(0, 2, 1).astype(np.float32)
    return images, (gnd.astype(np.int64) - gnd.min())


#: Benchmarks the pixel-trained methods read as arrays: name -> loader of (images, labels).
ARRAY_DATASETS = ("mnist", "coil20")


class PixelData:
    """Images as one array, for the methods that train on pixels (MMDC, IMC-SwAV).

    Attributes
    ----------
    images : uint8 ndarray of shape (n, C, H, W)
    paths : list of str
        One name per image for the run folder: the file path, or ``<dataset>/<index>``.
    labels : list of str or None
        True classes (folder names, or the benchmark's labels), for scoring only.
    skipped : list of (path, reason)
        Files that could not be read.
    """

    def __init__(self, images: np.ndarray, paths: list[str], labels: list[str] | None,
                 skipped: list[tuple[str, str]]):
        self.images, self.paths, self.labels, self.skipped = images, paths, labels, skipped


def load_pixels(images: str = "", dataset: dict | None = None, image_size: int = 32, channels: int = 3,
                labels: str | None = None, progress: bool = False) -> PixelData:
    """Read the training images of a pixel-trained method, from a folder or a benchmark.

    Parameters
    ----------
    images : str
        Folder searched recursively (every image resized to ``image_size`` squared,
        converted to ``channels`` 1 or 3). Unreadable files are skipped and listed.
    dataset : dict or None
        ``{name: mnist|coil20, source: PATH}`` instead of a folder: the benchmark at its
        own size and channels, with its labels.
    labels : "folders" or None
        With a folder: each image's parent folder is its true class.
    """
    if dataset:
        name, source = dataset.get("name"), dataset.get("source")
        if name not in ARRAY_DATASETS or not source or set(dataset) != {"name", "source"}:
            raise DeepclustError(f"dataset={dataset!r} must be {{name: {'|'.join(ARRAY_DATASETS)}, source: PATH}}")
        x, y = load_mnist(source) if name == "mnist" else load_coil20(source)
        if x.dtype != np.uint8:
            x = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
        return PixelData(x[:, None], [f"{name}/{i:05d}" for i in range(len(x))], [str(int(v)) for v in y], [])
    if not images:
        raise DeepclustError("no images given: pass an image folder (images: DIR) or a dataset {name, source}")
    if channels not in (1, 3):
        raise DeepclustError(f"channels={channels!r} must be 1 (grey) or 3 (colour)")
    from PIL import Image

    records = find_images(images)
    arrays, kept, skipped = [], [], []
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc="reading images", unit="img")
    for r in iterator:
        try:
            img = load_image(r.path).resize((image_size, image_size), Image.BILINEAR)
        except Exception as exc:  # noqa: BLE001  any unreadable file is reported and skipped
            skipped.append((r.path, describe_load_error(exc)))
            continue
        arr = np.asarray(img.convert("L") if channels == 1 else img, dtype=np.uint8)
        arrays.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
        kept.append(r)
    if not arrays:
        raise DeepclustError(f"none of the {len(records)} images in '{images}' could be read")
    return PixelData(np.stack(arrays), [r.path for r in kept],
                     [r.folder for r in kept] if labels == "folders" else None, skipped)

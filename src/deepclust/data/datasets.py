"""Standard benchmarks laid out as deepclust reads any data set: one folder per class.

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

import os
import re
import shutil
import tempfile
import zipfile

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

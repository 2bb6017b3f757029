"""What a user keeps: a run's clusters as folders, and the backbone as an ONNX model.

* :func:`export_clusters` - one folder per cluster holding the images (symlinks by
  default, or copies) and ``mapping.csv``; it writes into a new folder only, never over a
  user's files, and the folder appears whole or not at all.
* :func:`export_onnx` - the backbone of a run (fine-tuned or not), or any backbone by
  name, as an ONNX model taking a batch of preprocessed images and giving the embeddings;
  checked against PyTorch with onnxruntime when it is installed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

import numpy as np

from deepclust import runs
from deepclust.errors import DeepclustError
from deepclust.io import UMASK, write_csv, write_json

log = logging.getLogger("deepclust")

MODES = ("link", "copy")
MAPPING = "mapping.csv"
REFUSED = "refused.csv"


def cluster_folder_name(cluster: int, width: int) -> str:
    return "noise" if cluster < 0 else f"cluster-{cluster:0{width}d}"


def export_clusters(run_dir: str | os.PathLike, to: str | os.PathLike, mode: str = "link") -> dict:
    """Write ``to/cluster-NNN/<image>`` for every clustered image of ``run_dir`` (``noise/``
    for noise) and ``to/mapping.csv`` (path, cluster, exported, distance[, label]).

    ``to`` must not exist or be empty. Images whose file is gone are left out and listed
    in mapping.csv with an empty ``exported``. Two images of one cluster with the same
    file name get ``__2``, ``__3``... before the extension. Returns counts."""
    if mode not in MODES:
        raise DeepclustError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    run = runs.load_run(run_dir)
    to = os.path.realpath(os.fspath(to))  # a link to a folder is that folder (renaming onto a link fails)
    if os.path.exists(to) and (not os.path.isdir(to) or os.listdir(to)):
        raise DeepclustError(f"'{to}' already exists and is not an empty folder; deepclust never writes over "
                             "your files: pass a new folder to --to")
    parent = os.path.dirname(to)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(to)}.", suffix=".tmp")
    os.chmod(work, 0o777 & ~UMASK)  # mkdtemp makes 0700; the folder is the user's, like any they create
    width = max(3, len(str(int(run.clusters.max())))) if len(run.clusters) else 3
    roots = image_roots(run)
    used: dict[str, set] = {}
    rows, exported, missing, refused = [], 0, 0, []
    try:
        for i, (path, cluster) in enumerate(zip(run.paths, run.clusters.tolist())):
            source = os.path.abspath(run.resolve(path))
            folder = cluster_folder_name(int(cluster), width)
            target = ""
            problem = foreign_image(source, roots) if os.path.lexists(source) else None
            if problem:
                refused.append((path, problem))
            elif os.path.isfile(source):
                names = used.setdefault(folder, set())
                stem, ext = os.path.splitext(os.path.basename(source))
                name, n = stem + ext, 1
                while name in names:
                    n += 1
                    name = f"{stem}__{n}{ext}"
                names.add(name)
                os.makedirs(os.path.join(work, folder), exist_ok=True)
                if mode == "link":
                    os.symlink(source, os.path.join(work, folder, name))
                else:
                    shutil.copy2(source, os.path.join(work, folder, name))
                target = f"{folder}/{name}"
                exported += 1
            else:
                missing += 1
            distance = f"{run.distances[i]:.6f}" if np.isfinite(run.distances[i]) else ""
            rows.append([path, int(cluster), target, distance] + ([run.labels[i]] if run.labels is not None else []))
        write_csv(os.path.join(work, MAPPING), ["path", "cluster", "exported", "distance"]
                  + (["label"] if run.labels is not None else []), rows)
        if refused:
            write_csv(os.path.join(work, REFUSED), ["path", "reason"], refused)
        if os.path.isdir(to):
            os.rmdir(to)  # empty (checked above); rmdir fails rather than lose anything put there since
        os.rename(work, to)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if missing:
        log.warning("%d image(s) of the run no longer exist; they are listed in %s without a file", missing, MAPPING)
    if refused:
        log.warning("%d path(s) of the run's assignments.csv are not its own images and were not exported "
                    "(e.g. %s: %s); see %s", len(refused), refused[0][0], refused[0][1], os.path.join(to, REFUSED))
    return {"images": exported, "missing": missing, "refused": len(refused), "clusters": len(used), "folder": to,
            "mode": mode}


def image_roots(run: runs.Run) -> list[str]:
    """The image folders a run recorded (``deepclust cluster IMAGES``, a store's images,
    an end-to-end method's images), as absolute paths: its images lie under them."""
    folders = [(run.summary.get("config") or {}).get("images")]
    store = (run.summary.get("resolved") or {}).get("embeddings_store")
    if store:
        try:
            with open(os.path.join(store, "store.json"), encoding="utf-8") as fh:
                folders.append(json.load(fh).get("images"))
        except (OSError, ValueError):
            pass
    return [os.path.normpath(os.path.abspath(run.resolve(f))) for f in folders if isinstance(f, str) and f]


def foreign_image(source: str, roots: list[str]) -> str | None:
    """Why ``source`` is not one of the run's own images, or None when it is: it must lie
    under one of ``roots`` (as written, ``..`` resolved) and open as an image. A crafted
    assignments.csv could otherwise make export copy any readable file (``/etc/shadow``)."""
    from PIL import Image, UnidentifiedImageError

    path = os.path.normpath(source)
    if roots and not any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        return f"outside the run's image folder(s) {', '.join(roots)}"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file"
        with Image.open(path):  # reads the header only
            pass
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"not an image ({type(exc).__name__})"
    return None


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and how close it is to PyTorch."""

    path: str
    backbone: str
    image_size: int
    num_features: int
    max_abs_diff: float | None  # on a checking batch, None without onnxruntime
    max_abs_output: float | None


def _backbone_of_run(run_dir: str) -> tuple[str, str, int | None, bool, str | None]:
    run = runs.load_run(run_dir)
    config = run.summary.get("config", {})
    # the name as given first: a short name finds its folder in DEEPCLUST_MODELS
    name = config.get("backbone") or run.summary.get("resolved", {}).get("backbone")
    if not name or "weights" not in config:
        raise DeepclustError(f"'{run_dir}' does not record an image backbone (an end-to-end method's run?); "
                             "pass --backbone NAME [--weights PATH] instead")
    return (name, run.backbone_weights(), config.get("image_size"), bool(config.get("flip_average", False)),
            config.get("pooling"))


def export_onnx(out: str | os.PathLike, run_dir: str | None = None, backbone: str | None = None,
                weights: str = "pretrained", image_size: int | None = None, opset: int = 18,
                check: bool = True, atol: float = 1e-4) -> OnnxExport:
    """Export a backbone to ONNX: input ``images`` (batch, 3, S, S) float32, preprocessed as
    the backbone's data config says (resize, crop, mean/std, in ``<out>.json``), output
    ``embeddings`` (batch, num_features); the batch size is free.

    With ``check``, onnxruntime (when installed) runs the model on a seeded random batch
    and the largest difference from PyTorch must be at most ``atol`` times the largest
    output, else an error."""
    import torch  # deferred, as the backbone below: exporting clusters as folders needs neither

    from deepclust.features.backbones import create_backbone  # deferred with torch
    from deepclust.features.runtime import export_backbone  # deferred with torch

    if (run_dir is None) == (backbone is None):
        raise DeepclustError("give a run folder or --backbone NAME, not both or neither")
    flip, pooling = False, None
    if run_dir is not None:
        backbone, weights, size, flip, pooling = _backbone_of_run(run_dir)
        image_size = image_size or size
    model = create_backbone(backbone, weights=weights, image_size=image_size, flip_average=flip, pooling=pooling).eval()
    size = model.image_size
    out = os.fspath(out)
    tmp = f"{out}.{os.getpid()}.tmp.onnx"  # checked before it takes the name: a failed check leaves nothing
    try:
        export_backbone(model, tmp, opset)
        diff = peak = None
        if check:
            try:
                import onnxruntime
            except ImportError:
                log.warning("onnxruntime is not installed: the ONNX model was not checked against PyTorch")
            else:
                batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
                session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
                got = session.run(None, {"images": batch.numpy()})[0]
                with torch.no_grad():
                    want = model(batch).numpy()
                diff, peak = float(np.abs(got - want).max()), float(np.abs(want).max())
                if diff > atol * max(peak, 1.0):
                    raise DeepclustError(f"the ONNX model differs from PyTorch by {diff:.2e} (largest output "
                                         f"{peak:.2e}); above the tolerance {atol:g} x largest output: not written")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    cfg = model.data_config
    write_json(out + ".json", {"backbone": model.name, "weights": model.weights, "input": "images",
                               "output": "embeddings", "image_size": size, "num_features": model.num_features,
                               "preprocessing": {k: cfg[k] for k in cfg},
                               "check": {"max_abs_diff": diff, "max_abs_output": peak, "atol_relative": atol}})
    return OnnxExport(out, model.name, size, model.num_features, diff, peak)

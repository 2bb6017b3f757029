"""``deepclust embed``: a large image collection into an embedding store, on Dask workers or here."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Sequence

from tqdm.auto import tqdm

from deepclust.data import find_images
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError
from deepclust.features.backbones import DEFAULT_BACKBONE, create_backbone
from deepclust.features.extract import embedding_signature
from deepclust.features.store import (
    STORE_FORMAT,
    EmbeddingTable,
    create_store,
    embed_partition,
    finish_store,
    finished_parts,
    missing_chunks,
    new_store_info,
    open_store,
    part_file,
)
from deepclust.io import check_writable, lock_folder, read_csv
from deepclust.parallel.executors import LocalExecutor

log = logging.getLogger("deepclust")


def embed_images(images: str, out: str, backbone: str | None = None, weights: str = "pretrained",
                 image_size: int | None = None, executor=None, partition_size: int = 1024, batch_size: int = 32,
                 device: str = "auto", classes: Sequence[str] | None = None, progress: bool = True,
                 fast_decode: bool = False, pooling: str | None = None) -> EmbeddingTable:
    """Embed every image under ``images`` into the store ``out``, partition by partition.

    ``device``: ``auto`` (each worker its GPU when it has one, else its CPU), ``cpu``,
    ``cuda``. Workers on other machines must see the images and ``out`` at the same
    absolute paths as this process (a shared file system). ``fast_decode``: see
    :func:`~deepclust.features.extract.extract_embeddings`.

    Resumes an unfinished store made with the same images and backbone; refuses one
    made with others. Returns the finished store.
    """
    out = os.fspath(out)
    if partition_size < 1 or batch_size < 1:
        raise DeepclustError("--partition-size and --batch-size must be >= 1")
    if device != "auto":
        resolve_device(device)  # a wrong name fails here, not on every worker
    fresh = not os.path.exists(out)
    check_writable(out)
    try:
        with lock_folder(out, "embedding store"):
            return _embed_images(images, out, backbone, weights, image_size, executor, partition_size, batch_size,
                                 device, classes, progress, fast_decode, pooling)
    except DeepclustError:
        if fresh and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)  # refused before any work: leave no empty folder behind
        raise


def _embed_images(images, out, backbone, weights, image_size, executor, partition_size, batch_size, device, classes,
                  progress, fast_decode, pooling=None) -> EmbeddingTable:

    executor = executor or LocalExecutor()
    records = find_images(images, classes=classes, exclude=[out])
    if not records:
        raise DeepclustError(f"no images found under '{images}'")
    model = create_backbone(backbone or DEFAULT_BACKBONE, weights=weights, image_size=image_size, pooling=pooling)
    # the name as given (a short name finds its folder in DEEPCLUST_MODELS on every worker)
    spec = {"name": backbone or DEFAULT_BACKBONE, "weights": weights, "image_size": model.image_size,
            "fast_decode": bool(fast_decode), "pooling": model.pooling}
    info = new_store_info(images, {**spec, "resolved_weights": model.weights,
                              "signature": embedding_signature(model, fast_decode),
                              "data_config": dict(model.data_config)},
                     model.num_features, len(records), partition_size)
    index_rows = [(r.path, r.folder, r.size, r.mtime_ns) for r in records]
    info_path = os.path.join(out, "store.json")
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as fh:
            old = json.load(fh)
        same_index = [(r["path"], r["folder"], r["size"], r["mtime_ns"]) for r in read_csv(os.path.join(out, "index.csv"))] \
            == [(p, f, str(s), str(m)) for p, f, s, m in index_rows]
        if old.get("format") != STORE_FORMAT or old.get("backbone", {}).get("signature") != info["backbone"]["signature"] \
                or old.get("partition_size") != partition_size or not same_index:
            raise DeepclustError(f"'{out}' holds embeddings of other images or another backbone or partition size; "
                                 "embed into a new --out folder (or delete this one)")
        info = {**old, "complete": False}
    elif os.path.exists(out) and [n for n in os.listdir(out) if not n.startswith(".")]:
        raise DeepclustError(f"'{out}' exists and is not an embedding store; choose a new --out folder")
    else:
        create_store(out, info, index_rows)
    done = finished_parts(out)
    for part in missing_chunks(out, done):  # marked done, but its vectors are gone: redo it
        log.warning("partition %d of '%s' lost its vectors; embedding it again", part, out)
        os.remove(part_file(out, part))
        del done[part]
    # workers may run elsewhere, in another folder: they get absolute paths (of a file system they share)
    where = os.path.abspath(out)
    tasks = [{"folder": where, "part": p, "start": s,
              "records": [dataclasses.replace(r, path=os.path.abspath(r.path)) for r in records[s:s + partition_size]]}
             for p, s in enumerate(range(0, len(records), partition_size)) if p not in done]
    log.info("embedding %d images in %d partitions (%d already done) on the %s", len(records),
             info["n_partitions"], len(done), executor.name)
    del model  # the workers load their own
    bar = tqdm(total=len(records), initial=sum(p["stop"] - p["start"] for p in done.values()), unit="img",
               desc="embedding", disable=not progress, dynamic_ncols=True)
    errors = []
    try:
        spec_shared = executor.share(spec)
        settings = executor.share({"batch_size": batch_size, "device": device})
        for i, result, error in executor.run(embed_partition, tasks, spec_shared, settings):
            if error is not None:  # the other partitions go on; a rerun retries this one
                errors.append(f"partition {tasks[i]['part']}: {error}")
                log.error("embedding %s", errors[-1])
                continue
            bar.update(result["stop"] - result["start"])
    finally:
        bar.close()
    done = finished_parts(out)
    if len(done) < info["n_partitions"]:
        raise DeepclustError(f"{info['n_partitions'] - len(done)} of {info['n_partitions']} partitions are not done "
                             f"({'; '.join(errors[:3]) or 'interrupted'}); run the same command again to finish them")
    skipped = [(records[row].path, reason) for part in sorted(done) for row, reason in done[part]["failed"]]
    finish_store(out, info, skipped)
    if skipped:
        log.warning("skipped %d unreadable image(s); see %s", len(skipped), os.path.join(out, "skipped.csv"))
    return open_store(out)

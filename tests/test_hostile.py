"""Hostile and broken inputs, as a tester who wants deepclust to fail would make them.

Every probe of the issue "no code runs from a file, nothing hangs, no run gets stuck,
nothing is lost" is kept here: crafted pickles, FIFOs, kills, damaged caches and run
files, unwritable outputs, concurrent runs, formula cells, lost store chunks, stale
outputs. Each ends in one line that names the problem (exit code 2), or in a run that
goes on and says what it skipped, never in a traceback, a hang or silent damage.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.cli import main

TINY = ["--backbone", "test_efficientnet", "--image-size", "32", "--no-progress"]


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _error_line(capsys) -> str:
    """The one line a refused command printed (and nothing like a traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("deepclust: error:")]
    assert len(errors) == 1, err
    assert not any("Traceback" in line for line in err)
    assert "weights_only=False" not in errors[0]  # never advise loading a file unsafely
    return errors[0]


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _make_images(root, names, per_class=6, seed=0):
    """Small noisy colour images (PNG), ``per_class`` in a folder per name, made here."""
    rng = np.random.default_rng(seed)
    for name, colour in zip(names, COLOURS):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """3 classes of 6 images."""
    return _make_images(tmp_path_factory.mktemp("hostile") / "images", ["class0", "class1", "class2"])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny backbone with random weights saved once, so that every run embeds alike."""
    from deepclust.features.backbones import create_backbone, save_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_backbone(create_backbone("test_efficientnet", weights="random", image_size=32), path)
    return str(path)


def _cluster(images, out, weights, *extra):
    """Cluster with the run's own embedding cache (``OUT/cache``), so a test sees only its shards."""
    return main(["-q", "cluster", str(images), "--out", str(out), *TINY, "--weights", weights,
                 "--cache", str(os.path.join(out, "cache")), *map(str, extra)])


@pytest.fixture(scope="module")
def finished_run(images, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert _cluster(images, out, weights, "--labels", "folders") == 0
    return out


class _Marker:
    """A pickle that creates a file when it is loaded: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(path, marker):
    """A crafted checkpoint at ``path``: a dict as deepclust writes, one value a pickle bomb."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"format": "deepclust", "state_dict": {}, "net": _Marker(marker)}, path)


# -- 1. no code runs from a checkpoint ----------------------------------------------------------


def test_a_crafted_weights_file_is_refused_without_running_it(images, tmp_path, capsys):
    marker = tmp_path / "ran"
    _plant(tmp_path / "evil.pt", marker)
    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "r"), *TINY, "--n-clusters", "3",
                 "--weights", str(tmp_path / "evil.pt")]) == 2
    assert not marker.exists()  # checked first: the file's code must not have run
    assert "refused to load weights file" in _error_line(capsys)
    assert main(["-q", "export-onnx", "--backbone", "test_efficientnet", "--weights", str(tmp_path / "evil.pt"),
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert "refused to load" in _error_line(capsys)
    assert not marker.exists()


def test_a_crafted_c2m_metric_is_refused_without_running_it(images, weights, tmp_path, capsys):
    marker = tmp_path / "ran"
    _plant(tmp_path / "metric.pt", marker)
    assert _cluster(images, tmp_path / "r1", weights, "--algorithm", "c2m", "--param",
                    f"metric={tmp_path / 'metric.pt'}") == 2
    assert not marker.exists()
    assert "refused to load C2M metric" in _error_line(capsys)
    assert _cluster(images, tmp_path / "r2", weights, "--n-clusters", "auto", "--k-method", "c2m", "--k-metric",
                    tmp_path / "metric.pt") == 2
    assert "refused to load C2M metric" in _error_line(capsys)
    assert not marker.exists()


def test_a_crafted_training_checkpoint_is_refused_on_resume(images, tmp_path, capsys):
    marker = tmp_path / "ran"
    four = _make_images(tmp_path / "images", ["a", "b", "c", "d"], per_class=11)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"name": "s", "subsets": {"train": ["a", "b"], "val": ["c", "d"]}}))
    _plant(tmp_path / "train" / "last.pt", marker)
    assert main(["-q", "train", "--images", str(four), "--split", str(split), "--out", str(tmp_path / "train"),
                 "--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32", "--epochs", "1",
                 "--n-tasks", "1", "--n-way", "2", "--no-progress"]) == 2
    assert not marker.exists()  # checked first: the file's code must not have run
    assert "refused to load training checkpoint" in _error_line(capsys)


@pytest.mark.parametrize("method", ["mmdc", "imc_swav"])
def test_a_crafted_end_to_end_checkpoint_is_refused_on_resume(method, images, tmp_path, capsys):
    marker = tmp_path / "ran"
    _plant(tmp_path / "run" / "seed0" / "last.pt", marker)
    assert main(["-q", "train", "--method", method, "--images", str(images), "--out", str(tmp_path / "run"),
                 "--n-clusters", "3", "--epochs", "1", "--backbone", "conv4", "--image-size", "16",
                 "--no-progress"]) == 2
    assert not marker.exists()  # checked first: the file's code must not have run
    assert "refused to load" in _error_line(capsys)


@pytest.fixture(scope="module")
def mmdc_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmdc") / "run"
    assert main(["-q", "train", "--method", "mmdc", "--images", str(images), "--out", str(out), "--n-clusters", "3",
                 "--epochs", "1", "--backbone", "conv4", "--image-size", "16", "--no-progress"]) == 0
    return out


def test_predict_refuses_a_crafted_checkpoint_in_a_received_run_folder(mmdc_run, images, tmp_path, capsys):
    import shutil

    run = tmp_path / "received"
    shutil.copytree(mmdc_run, run)
    marker = tmp_path / "ran"
    _plant(run / "seed0" / "last.pt", marker)
    assert main(["-q", "predict", str(run), str(images), "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert not marker.exists()  # checked first: the file's code must not have run
    assert "refused to load MMDC checkpoint" in _error_line(capsys)


def test_a_plain_pickle_is_refused_too(tmp_path):
    from deepclust.checkpoint import load_checkpoint
    from deepclust.errors import DeepclustError

    marker = tmp_path / "ran"
    with open(tmp_path / "x.pkl", "wb") as fh:
        pickle.dump({"a": _Marker(marker)}, fh)
    with pytest.raises(DeepclustError, match="refused to load .* never runs code"):
        load_checkpoint(tmp_path / "x.pkl")
    assert not marker.exists()


# -- 9. a truncated end-to-end checkpoint ------------------------------------------------------


def test_a_truncated_end_to_end_checkpoint_is_one_line(mmdc_run, images, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mmdc_run, run)
    data = (run / "seed0" / "last.pt").read_bytes()
    (run / "seed0" / "last.pt").write_bytes(data[: len(data) // 2])
    assert main(["-q", "train", "--method", "mmdc", "--images", str(images), "--out", str(run), "--n-clusters", "3",
                 "--epochs", "1", "--backbone", "conv4", "--image-size", "16", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "damaged or truncated" in line and "seed0/last.pt" in line


# -- 2. only regular files are images --------------------------------------------------------------


def _alarm(seconds):
    def ring(signum, frame):
        raise TimeoutError(f"hung for {seconds} s")

    signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)


def test_a_fifo_named_like_an_image_is_skipped_not_waited_on(images, weights, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    os.symlink(images, root / "real", target_is_directory=True)
    os.mkfifo(root / "pipe.jpg")
    _alarm(120)
    try:
        assert _cluster(root, tmp_path / "run", weights, "--n-clusters", "3") == 0
    finally:
        signal.alarm(0)
    skipped = _read_csv(tmp_path / "run" / "skipped.csv")
    assert [r["path"] for r in skipped] == [str(root / "pipe.jpg")]
    assert "FIFO" in skipped[0]["reason"]


# -- 3. a kill loses little, SIGTERM nothing ---------------------------------------------------


def test_vectors_are_written_to_the_cache_by_time_as_well_as_by_count(images, weights, tmp_path):
    from deepclust.features.backbones import create_backbone
    from deepclust.data import find_images
    from deepclust.features.extract import EmbeddingStore, extract_embeddings

    backbone = create_backbone("test_efficientnet", weights=weights, image_size=32)
    store = EmbeddingStore(tmp_path / "cache", backbone.signature())
    seen = []
    forward = backbone.forward

    def counting(x):  # how many shards were on disk when each batch was computed
        seen.append(len(list((tmp_path / "cache").rglob("shard-*.npz"))))
        return forward(x)

    backbone.forward = counting
    extract_embeddings(find_images(images), backbone, batch_size=4, store=store, progress=False,
                       flush_every=10**6, flush_seconds=0)
    assert seen == list(range(len(seen))) and len(seen) == 5  # every batch was on disk before the next began


def test_sigterm_saves_the_work_done_and_a_rerun_says_it_resumes(images, weights, tmp_path, monkeypatch, capsys):
    from deepclust.features.backbones import Backbone

    calls = []
    forward = Backbone.forward

    def killed_on_third_batch(self, x):
        calls.append(len(x))
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, x)

    monkeypatch.setattr(Backbone, "forward", killed_on_third_batch)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["cluster", str(images), "--out", str(tmp_path / "run"), *TINY, "--weights", weights,
                     "--n-clusters", "3", "--batch-size", "4", "--cache", str(tmp_path / "cache")]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "terminated; the work done so far is saved" in capsys.readouterr().err
    monkeypatch.setattr(Backbone, "forward", forward)
    assert main(["cluster", str(images), "--out", str(tmp_path / "run"), *TINY, "--weights", weights,
                 "--n-clusters", "3", "--batch-size", "4", "--cache", str(tmp_path / "cache")]) == 0
    # the two batches done before the signal were saved; the third was interrupted
    assert "resuming: 8 image(s) taken from the cache" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["counts"]["embeddings_reused"] == 8 and summary["counts"]["embeddings_computed"] == 10


# -- 4, 5. damaged cache shards ---------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "narrow", "float64"])
def test_a_damaged_cache_shard_is_set_aside_and_its_images_embedded_again(damage, images, weights, finished_run,
                                                                           tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shard = next((run / "cache").rglob("shard-*.npz"))
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        middle = len(data) // 2
        shard.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:
        with np.load(shard) as npz:
            arrays = dict(npz)
        arrays["vectors"] = arrays["vectors"][:, :10] if damage == "narrow" else arrays["vectors"].astype(np.float64)
        np.savez(shard, **arrays)
    capsys.readouterr()
    assert _cluster(images, run, weights, "--labels", "folders") == 0
    err = capsys.readouterr().err
    if damage != "flip" or "not usable" in err:  # a flipped byte in the padding may leave the data intact
        assert f"embedding cache shard '{shard}' is not usable" in err
        assert shard.with_name(shard.name + ".damaged").exists()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["counts"]["embeddings_computed"] == 18
    assert np.allclose(np.load(run / "embeddings.npy"), np.load(finished_run / "embeddings.npy"), atol=1e-5)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((finished_run / "metrics.json").read_text())


# -- 6. unwritable and full outputs -----------------------------------------------------------------


def test_an_output_that_cannot_be_written_is_refused_before_any_work(images, weights, tmp_path, capsys,
                                                                      monkeypatch):
    (tmp_path / "file").write_text("x")
    assert _cluster(images, tmp_path / "file" / "run", weights, "--n-clusters", "3") == 2
    assert "cannot write to" in _error_line(capsys)

    import deepclust.io

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(deepclust.io.tempfile, "mkstemp", read_only)
    assert _cluster(images, tmp_path / "ro", weights, "--n-clusters", "3") == 2
    line = _error_line(capsys)
    assert "cannot write to" in line and "Read-only file system" in line
    assert not (tmp_path / "ro" / "cache").exists()  # refused before any image was embedded


def test_a_full_disk_keeps_the_embeddings_and_says_what_was_kept(images, weights, tmp_path, capsys, monkeypatch):
    from deepclust import runs
    from deepclust.features.extract import EmbeddingStore

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EmbeddingStore, "add", full)  # the cache cannot be written: the run goes on
    assert _cluster(images, tmp_path / "a", weights, "--n-clusters", "3") == 0
    assert "cannot write the embedding cache" in capsys.readouterr().err
    assert len(np.load(tmp_path / "a" / "embeddings.npy")) == 18  # every image clustered all the same
    assert not list((tmp_path / "a" / "cache").rglob("shard-*.npz"))
    monkeypatch.undo()
    monkeypatch.setattr(runs, "write_embeddings", full)  # the results cannot be written: one line
    assert _cluster(images, tmp_path / "b", weights, "--n-clusters", "3") == 2
    line = _error_line(capsys)
    assert "cannot write the results to" in line and "No space left on device" in line and "are kept" in line
    assert list((tmp_path / "b" / "cache").rglob("shard-*.npz"))  # what was computed is kept for the rerun


# -- 7. --config that is not a YAML file ------------------------------------------------------------


def test_a_config_that_is_a_folder_or_binary_is_one_line(images, tmp_path, capsys):
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    for config, expected in ((tmp_path, "is a folder"), (tmp_path / "binary.yaml", "not a text file")):
        assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
        assert expected in _error_line(capsys)


# -- 13. YAML booleans ------------------------------------------------------------------------


@pytest.mark.parametrize("line", ['fast_decode: "false"', 'normalize: "no"', "normalize: 1"])
def test_a_quoted_boolean_in_a_config_is_refused(line, images, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(line + "\n")
    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "r"), "--config", str(tmp_path / "c.yaml"),
                 "--n-clusters", "3"]) == 2
    assert "must be true or false" in _error_line(capsys)


# -- 8. damaged run files ------------------------------------------------------------------------


@pytest.mark.parametrize("damage, expected", [
    ("summary", "summary.json' is damaged"),
    ("cluster", "assignments.csv' is damaged at row 2"),
    ("shape", "not float rows"),
    ("objects", "damaged or not a float array"),
])
def test_damaged_run_files_are_one_line_for_report_export_and_predict(damage, expected, finished_run, images,
                                                                     tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if damage == "summary":
        text = (run / "summary.json").read_text()
        (run / "summary.json").write_text(text[: len(text) // 2])
    elif damage == "cluster":
        rows = (run / "assignments.csv").read_text().splitlines()
        cells = rows[1].split(",")
        cells[1] = str(10**20)
        (run / "assignments.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    elif damage == "shape":
        np.save(run / "embeddings.npy", np.zeros((18, 4, 2), np.float32))
    else:
        np.save(run / "embeddings.npy", np.array([{"a": 1}] * 18, dtype=object), allow_pickle=True)
    for args in (["report", str(run)], ["export", str(run), "--to", str(tmp_path / "x")],
                 ["predict", str(run), str(images), "--out", str(tmp_path / "p"), "--no-progress"]):
        assert main(["-q", *args]) == 2
        assert expected in _error_line(capsys)


# -- 10, 14. export ---------------------------------------------------------------------------------


def test_export_to_a_link_writes_into_the_folder_it_points_to(finished_run, tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link", target_is_directory=True)
    assert main(["-q", "export", str(finished_run), "--to", str(tmp_path / "link")]) == 0
    assert os.path.islink(tmp_path / "link") and (tmp_path / "real" / "mapping.csv").is_file()
    assert len(list((tmp_path / "real").glob("cluster-*/*.png"))) == 18


def test_export_copies_only_the_runs_own_images(finished_run, images, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (images.parent / "notes.png").write_text("not an image, beside the images")
    rows = _read_csv(run / "assignments.csv")
    rows[0]["path"] = str(secret)  # outside the image folder
    rows[1]["path"] = str(images / ".." / ".." / secret.parent.name / "secret.txt")  # climbs out with ..
    rows[2]["path"] = str(images / "class0" / ".." / ".." / "notes.png")
    with open(run / "assignments.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["-q", "export", str(run), "--to", str(tmp_path / "out"), "--mode", "copy"]) == 0
    assert "3 refused as not the run's own images" in capsys.readouterr().out
    copied = [p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert b"password" not in b"".join(copied)
    refused = _read_csv(tmp_path / "out" / "refused.csv")
    assert [r["path"] for r in refused] == [rows[0]["path"], rows[1]["path"], rows[2]["path"]]
    assert "outside the run's image folder" in refused[0]["reason"]
    assert len(list((tmp_path / "out").glob("cluster-*/*.png"))) == 15


# -- 11. two runs into one folder -----------------------------------------------------------------


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(images, weights, tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".deepclust.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                         "started": "now"}))
        assert _cluster(images, out, weights, "--n-clusters", "3") == 2
        line = _error_line(capsys)
        assert f"in use by another deepclust command (pid {holder.pid}" in line
        assert not (out / "assignments.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _cluster(images, out, weights, "--n-clusters", "3") == 0  # its process is gone: the lock is stale
    assert "taking over the lock" in capsys.readouterr().err
    assert not (out / ".deepclust.lock").exists()  # released at the end


# -- 12. files that decode to nonsense, and warnings that name the file -------------------------


def test_a_float_tiff_with_nan_pixels_is_skipped_with_its_reason(images, weights, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    os.symlink(images, root / "real", target_is_directory=True)
    pixels = np.full((32, 32), 0.5, np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(root / "nan.tif")
    assert _cluster(root, tmp_path / "run", weights, "--n-clusters", "3") == 0
    skipped = _read_csv(tmp_path / "run" / "skipped.csv")
    assert [r["path"] for r in skipped] == [str(root / "nan.tif")] and "NaN or infinite" in skipped[0]["reason"]


def test_a_decoder_warning_names_the_file(images, monkeypatch):
    import warnings

    from PIL import ImageOps

    from deepclust.data import load_image

    original = ImageOps.exif_transpose

    def grumbling(img):
        warnings.warn("Corrupt EXIF data", UserWarning)
        return original(img)

    monkeypatch.setattr(ImageOps, "exif_transpose", grumbling)
    path = images / "class0" / "img0.png"
    with pytest.warns(UserWarning, match=f"'{path}': Corrupt EXIF data"):
        load_image(path)


# -- 15. spreadsheet formulas ---------------------------------------------------------------------


def test_cells_a_spreadsheet_would_run_are_neutralised_and_read_back_unchanged(weights, tmp_path):
    from deepclust.runs import load_run

    root = _make_images(tmp_path / "images", ["=1+2", "@SUM(A1)", "-cmd", "plain"], per_class=2)
    assert _cluster(root, tmp_path / "run", weights, "--labels", "folders") == 0
    with open(tmp_path / "run" / "assignments.csv", encoding="utf-8", newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert not any(c.startswith(("=", "+", "@")) or (c.startswith("-") and not c.lstrip("-").replace(".", "").isdigit())
                   for c in cells)
    assert "'=1+2" in cells and "'@SUM(A1)" in cells
    run = load_run(tmp_path / "run")
    assert set(run.labels) == {"=1+2", "@SUM(A1)", "-cmd", "plain"}
    assert all(os.path.isfile(p) for p in run.paths)


# -- 16. a store that lost a chunk --------------------------------------------------------------


def test_a_store_that_lost_a_chunk_says_so_and_embed_repairs_it(images, weights, tmp_path, capsys):
    store = tmp_path / "store"
    args = ["-q", "embed", str(images), "--out", str(store), *TINY, "--weights", weights, "--partition-size", "8"]
    assert main(args) == 0
    chunk = store / "vectors.zarr" / "c" / "1" / "0"
    assert chunk.is_file()
    chunk.unlink()
    assert main(["-q", "cluster", "--embeddings", str(store), "--out", str(tmp_path / "r"), "--n-clusters", "3"]) == 2
    assert "lost the vectors of 1 partition(s) (1)" in _error_line(capsys)
    assert main(args) == 0
    assert chunk.is_file()
    assert main(["-q", "cluster", "--embeddings", str(store), "--out", str(tmp_path / "r"), "--n-clusters", "3"]) == 0


# -- 17. a new run into an old run's folder --------------------------------------------------------


def test_a_new_run_retires_the_old_runs_outputs_and_the_report_shows_only_its_own(images, weights, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cluster(images, out, weights, "--labels", "folders") == 0
    assert main(["-q", "report", str(out), "--map", "pca"]) == 0
    assert main(["-q", "evaluate", str(out), "--seeds", "1"]) == 0
    first = json.loads((out / "summary.json").read_text())["run_id"]
    assert json.loads((out / "report" / "report.json").read_text())["run_id"] == first
    assert json.loads((out / "evaluation.json").read_text())["run_id"] == first
    assert _cluster(images, out, weights, "--n-clusters", "2") == 0  # no labels this time
    assert "were moved to" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and not (out / "report").exists()
    assert not (out / "evaluation.json").exists()
    assert (out / "retired" / first / "report" / "report.html").is_file()
    second = json.loads((out / "summary.json").read_text())["run_id"]
    assert second != first
    assert main(["-q", "report", str(out), "--map", "pca"]) == 0
    html = (out / "report" / "report.html").read_text()
    assert "2 clusters" in html and "ARI" not in html


# -- output hygiene -------------------------------------------------------------------------------


def test_other_libraries_chatter_stays_out_unless_verbose(capsys):
    from deepclust.cli import _setup_logging

    try:
        _setup_logging(quiet=False, verbose=False)
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        logging.getLogger("deepclust").info("found 3 images")
        err = capsys.readouterr().err
        assert "faiss" not in err and "deepclust: found 3 images" in err
        _setup_logging(quiet=False, verbose=True)
        logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
        assert "deepclust: [faiss.loader] Loading faiss" in capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()


def test_checkpoints_of_earlier_versions_with_numpy_arrays_still_load_but_not_objects_inside_them(tmp_path):
    from deepclust.checkpoint import load_checkpoint
    from deepclust.errors import DeepclustError

    # earlier deepclust versions pickled numpy arrays and scalars into MMDC's and training checkpoints
    torch.save({"labels_main": np.arange(5), "loss": np.float64(0.5), "net": {"w": torch.ones(2)}}, tmp_path / "old.pt")
    state = load_checkpoint(tmp_path / "old.pt")
    assert state["labels_main"].tolist() == [0, 1, 2, 3, 4] and state["loss"] == 0.5
    marker = tmp_path / "ran"
    torch.save({"labels": np.array([_Marker(marker)], dtype=object)}, tmp_path / "objects.pt")
    with pytest.raises(DeepclustError, match="refused to load"):
        load_checkpoint(tmp_path / "objects.pt")
    assert not marker.exists()

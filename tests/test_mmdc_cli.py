"""MMDC from the command line and as an experiment, on real CIFAR-10 JPEGs, MNIST and COIL-20."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from conftest import SHARED
from deepclust.cli import main
from deepclust.errors import DeepclustError
from deepclust.runs import load_run

CIFAR = SHARED / "data" / "cifar10-test"
TINY = dict(backbone="conv4", epochs=2, batch_size=16, image_size=16)


@pytest.fixture
def three_classes(tmp_path):
    """30 real CIFAR-10 images of three classes (symlinks) and one corrupt file."""
    root = tmp_path / "images"
    for name in ("airplane", "frog", "truck"):
        (root / name).mkdir(parents=True)
        for f in sorted((CIFAR / name).glob("*.jpg"))[:10]:
            os.symlink(f, root / name / f.name)
    (root / "frog" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_train_mmdc_on_a_folder_writes_a_run_folder_like_cluster(three_classes, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "mmdc", "--images", str(three_classes), "--out", str(out), "--n-clusters", "3",
            "--labels", "folders", "--epochs", "2", "--runs", "2", "--refine-epochs", "1", "--backbone", "conv4",
            "--image-size", "16", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "clustered 30 images" in printed and "ACC" in printed
    run = load_run(out)  # the same reader as for `deepclust cluster` folders
    assert len(run.paths) == 30 and run.embeddings.shape == (30, 3) and set(run.labels) == {"airplane", "frog", "truck"}
    assert np.allclose(np.linalg.norm(run.embeddings, axis=1), 1, atol=1e-5)  # the normalised outputs
    assert set(np.unique(run.clusters)) <= {0, 1, 2}
    skipped = (out / "skipped.csv").read_text()
    assert "broken.jpg" in skipped
    summary = run.summary
    assert summary["method"] == "mmdc" and [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["resolved"]["labels_from"] == "ensemble: majority after refinement"
    assert set(summary["scores"]["ensembles"]) == {"main", "refined"}
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 30
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "mmdc"
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "seed,epoch,stage,loss,seconds" and len(history) == 1 + 2 * 3
    assert (out / "seed0" / "last.pt").is_file() and (out / "seed1" / "last.pt").is_file()
    first = (out / "assignments.csv").read_text()
    assert main(args) == 0  # finished runs are loaded, not retrained: same result
    assert (out / "assignments.csv").read_text() == first
    assert main(["evaluate", str(out), "--seeds", "2"]) == 0  # other clusterers on the MMDC embedding


def test_train_mmdc_explains_what_is_missing(three_classes, tmp_path, capsys):
    base = ["train", "--method", "mmdc", "--images", str(three_classes), "--out", str(tmp_path / "r")]
    for extra, message in (([], "needs the number of clusters; pass --n-clusters K"),
                           (["--n-clusters", "3", "--alpha", "0.5"], "mmdc has no setting alpha"),
                           (["--n-clusters", "3", "--backbone", "nonet"], "unknown backbone 'nonet'")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert main(["train", "--method", "nat", "--out", str(tmp_path / "r")]) == 2
    assert "unknown method 'nat'; choose one of: c2m, classic, episodic, imc_swav, linear, mmdc" in capsys.readouterr().err


def test_pixel_data_from_benchmarks_and_folders(three_classes):
    from deepclust.data.datasets import load_pixels

    mnist = load_pixels(dataset={"name": "mnist", "source": str(SHARED / "data" / "mnist")})
    assert mnist.images.shape == (10_000, 1, 28, 28) and mnist.images.dtype == np.uint8 and len(set(mnist.labels)) == 10
    coil = load_pixels(dataset={"name": "coil20", "source": str(SHARED / "data" / "coil20")})
    assert coil.images.shape == (1440, 1, 32, 32) and coil.images.max() > 200
    grey = load_pixels(str(three_classes), image_size=20, channels=1, labels="folders")
    assert grey.images.shape == (30, 1, 20, 20) and len(grey.skipped) == 1 and grey.labels[0] == "airplane"
    assert load_pixels(str(three_classes)).labels is None
    with pytest.raises(DeepclustError, match="must be {name: mnist|coil20, source: PATH}"):
        load_pixels(dataset={"name": "svhn", "source": "x"})


def test_a_tiny_mmdc_experiment_with_an_ablation(three_classes, tmp_path):
    from deepclust.experiments.end_to_end import load_clustering_experiment

    config = {
        "name": "tiny", "method": "mmdc", "out": str(tmp_path / "exp"), "images": str(three_classes),
        "labels": "folders", "image_size": 16, "n_clusters": 3, "seeds": 2, "baseline_seeds": 2,
        "settings": {"backbone": "conv4", "epochs": 2, "refine_epochs": 1, "batch_size": 16},
        "variants": {"vanilla": {"repetitions": 1, "rotation_task": False}, "full": {}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "--no-progress"]) == 0
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "| k-means on raw pixels | - | mean of 2 seeds |" in table
    for variant in ("vanilla", "full"):
        for stage in ("main", "refined"):
            for selection in ("single runs (mean of 2)", "lowest loss", "majority"):
                assert f"| {variant} | {stage} | {selection} |" in table
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert [h["stage"] for h in results["variants"]["full"]["history"]["0"]] == ["cluster", "rotation", "refine"]
    assert [h["stage"] for h in results["variants"]["vanilla"]["history"]["1"]] == ["cluster", "cluster", "refine"]
    assert (tmp_path / "exp" / "figure.png").stat().st_size > 10_000
    assert len((tmp_path / "exp" / "results.csv").read_text().splitlines()) == 1 + 1 + 2 * 2 * 3
    bad = dict(config, settings={**config["settings"], "alpha": 0.5})
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(DeepclustError, match="unknown option.s. alpha in settings"):
        load_clustering_experiment(path)
    path.write_text(yaml.safe_dump(dict(config, variants={"x": {"repetitions": 0}})))
    with pytest.raises(DeepclustError, match="repetitions=0 must be an integer >= 1"):
        load_clustering_experiment(path)


def test_predict_new_images_into_an_mmdc_run_with_its_own_network(three_classes, tmp_path):
    """The network of the run's reference seed is restored from its checkpoint (no training):
    the run's own images come back in the clusters its reference network gave them."""
    out = tmp_path / "run"
    assert main(["-q", "train", "--method", "mmdc", "--images", str(three_classes), "--out", str(out), "--n-clusters",
                 "3", "--epochs", "2", "--backbone", "conv4", "--image-size", "16", "--no-progress"]) == 0
    stamp = (out / "seed0" / "last.pt").stat().st_mtime_ns
    assert main(["-q", "predict", str(out), str(three_classes), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert (out / "seed0" / "last.pt").stat().st_mtime_ns == stamp  # restored, not trained again
    rows = {r["path"]: r for r in _csv(tmp_path / "p" / "predictions.csv")}
    run = load_run(out)
    assert len(rows) == 30 and "broken.jpg" in (tmp_path / "p" / "skipped.csv").read_text()
    same = [rows[p]["cluster"] == str(c) for p, c in zip(run.paths, run.clusters)]
    assert np.mean(same) >= 0.9  # nearest centre in the outputs' space, not the network's own rule
    assert all(float(rows[p]["nearest_image_distance"]) < 1e-5 for p in run.paths)  # the same outputs as in the run
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["method"] == "mmdc" and summary["reference_seed"] == 0


def _csv(path):
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))

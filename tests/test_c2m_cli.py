"""C2M from the command line (train a metric on real images, cluster with it, pick k with it)
and as an experiment (the synthetic protocol and image-to-image transfer)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from conftest import SHARED, needs_moths
from deepclust.cli import main
from deepclust.errors import DeepclustError

COIL = {"name": "coil20", "source": str(SHARED / "data" / "coil20" / "COIL20.mat")}
MNIST = {"name": "mnist", "source": str(SHARED / "data" / "mnist")}
FAST = ["--param", "population=12", "--param", "iterations=2", "--param", "gae_epochs=5"]


@needs_moths
def test_train_a_metric_on_moth_species_then_cluster_and_choose_k_with_it(moth_split, tmp_path, capsys):
    images, split = moth_split
    broken = tmp_path / "extra" / "idaea_dimidiata"
    broken.mkdir(parents=True)
    out = tmp_path / "metric"
    args = ["train", "--method", "c2m", "--images", str(images), "--split", str(split), "--subset", "train",
            "--out", str(out), "--n-tasks", "3", "--task-size", "30", "--max-clusters", "4", "--epochs", "1",
            "--image-size", "64", "--no-progress", "--param", "n_neighbours=5"] + FAST
    assert main(args) == 0
    assert "metric.pt" in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["classes"] == 4 and summary["datasets"] == 3 and summary["features"] == 1280
    assert (out / "history.csv").read_text().startswith("epoch,real,fake,ari,seconds")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["preset"] == "images" and saved["params"]["n_neighbours"] == 5
    from deepclust.methods import C2M

    metric = C2M.load(out / "metric.pt")  # the images preset, with the given parameter on top
    assert metric.structure_features and metric.monotone and not metric.gae and metric.n_neighbours == 5
    assert metric.concentration and metric.critic_.penalty.shape == (5,)
    before = (out / "metric.pt").stat().st_mtime_ns
    assert main(args) == 0 and (out / "metric.pt").stat().st_mtime_ns == before  # reused, not retrained

    run = tmp_path / "run"
    common = [str(images), "--split", str(split), "--subset", "test", "--labels", "folders", "--image-size", "64",
              "--no-progress"]
    assert main(["cluster", *common, "--out", str(run), "--algorithm", "c2m", "--param", f"metric={out}/metric.pt"]) == 0
    printed = capsys.readouterr().out
    assert "clustered" in printed and "NMI" in printed  # the c2m clusterer found its own number of clusters
    metrics = json.loads((run / "metrics.json").read_text())
    assert 2 <= metrics["n_clusters"] <= 4 and metrics["n_images"] > 20
    chosen = tmp_path / "chosen"
    assert main(["cluster", *common, "--out", str(chosen), "--n-clusters", "auto", "--k-method", "c2m",
                 "--k-metric", f"{out}/metric.pt", "--k-max", "4"]) == 0
    curve = (chosen / "k_estimation.csv").read_text().splitlines()
    assert curve[0] == "k,score" and [int(r.split(",")[0]) for r in curve[1:]] == [2, 3, 4]
    assert main(["cluster", *common, "--out", str(tmp_path / "bad"), "--n-clusters", "auto", "--k-method", "c2m",
                 "--k-metric", str(tmp_path / "nowhere.pt")]) == 2
    assert "no C2M metric at" in capsys.readouterr().err
    assert main(["train", "--method", "c2m", "--images", str(images), "--out", str(tmp_path / "x"),
                 "--param", "colour=3"]) == 2
    assert "C2M has no parameter colour" in capsys.readouterr().err
    # a bad value fails before any image is read (the folder does not even exist)
    assert main(["train", "--method", "c2m", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"),
                 "--param", "cores=-1"]) == 2
    assert "cores=-1 must be a number >= 0" in capsys.readouterr().err


def test_the_synthetic_experiment_resumes_and_writes_table_2_and_the_critic_checks(tmp_path, capsys):
    config = {"name": "tiny", "method": "c2m", "out": str(tmp_path / "exp"), "test_datasets": 2, "check_datasets": 1,
              "max_clusters": 4, "n_samples": 50,
              "trainings": {"standard": {"datasets": 3, "epochs": 1}, "few-shot": {"datasets": 2, "epochs": 1}},
              "settings": {"input_dim": 2, "population": 10, "iterations": 2, "gae_epochs": 5},
              "variants": {"paper": {}, "features": {"gae": False, "size_features": True, "structure_features": True,
                                                     "objective": "ranking"}}}
    path = tmp_path / "c2m.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", str(path), "--no-progress"]) == 0
    table = (tmp_path / "exp" / "table.md").read_text()
    for text in ("| paper | standard |", "| features | few-shot |", "k-means, true k given", "Critic checks",
                 "| features-standard-s0 |"):
        assert text in table
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert sorted(results["parts"]) == ["features-few-shot-s0", "features-standard-s0", "paper-few-shot-s0",
                                        "paper-standard-s0"]
    checks = results["parts"]["features-standard-s0"]["checks"]
    assert set(checks) == {"blobs", "aniso", "moons", "circles"}
    assert all(c["rename_change"] < 1e-4 for c in checks.values())  # renaming clusters changes no score
    assert all(len(c["mean_score"]) == 11 and len(c["ranks"]) == 1 for c in checks.values())
    assert all(c["truth_best"] == float(c["ranks"][0] == 1) for c in checks.values())
    row = next(line for line in table.splitlines() if line.startswith("| features-standard-s0 |") and "/" in line)
    cells = [cell.split(" / ") for cell in row.strip("| ").split(" | ")[1:]]  # one per family
    assert "Best and Top 3" in table and [float(c[3]) for c in cells] == [  # Table 4: Best and Top 3
        float(checks[f]["ranks"][0] <= 3) for f in ("blobs", "aniso", "moons", "circles")]
    sets = results["parts"]["paper-standard-s0"]["test"]["moons"]["sets"]
    assert len(sets) == 2 and all(r["k_true"] == 2 and 2 <= r["k_found"] <= 4 for r in sets)
    assert (tmp_path / "exp" / "figure.png").stat().st_size > 1000
    stamp = (tmp_path / "exp" / "parts" / "paper-standard-s0.json").stat().st_mtime_ns
    assert main(["experiment", str(path), "--no-progress"]) == 0  # finished parts are loaded
    assert (tmp_path / "exp" / "parts" / "paper-standard-s0.json").stat().st_mtime_ns == stamp
    part_path = tmp_path / "exp" / "parts" / "features-standard-s0.json"
    old = json.loads(part_path.read_text())
    old["checks"]["blobs"]["fractions"] = [0.0, 1.0]  # checks of an older kind are redone from the saved metric
    part_path.write_text(json.dumps(old))
    assert main(["experiment", str(path), "--no-progress"]) == 0
    redone = json.loads(part_path.read_text())
    assert redone["checks"]["blobs"]["fractions"][-1] == 0.5 and redone["test"] == old["test"]
    changed = dict(config, variants={"paper": {"gae_epochs": 6}})  # a finished part made otherwise is not reused
    path.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert main(["experiment", str(path), "--no-progress"]) == 2
    assert "-s0.json was made with other settings" in capsys.readouterr().err
    # a saved metric is reused under a new search setting (its part redone, its training time kept)...
    trained = results["parts"]["features-standard-s0"]["train_seconds"]
    assert trained > 0
    searched = dict(config, variants={"features": {**config["variants"]["features"], "whiten": True}})
    path.write_text(yaml.safe_dump(searched, sort_keys=False))
    for training in ("standard", "few-shot"):
        (tmp_path / "exp" / "parts" / f"features-{training}-s0.json").unlink()
    metric = tmp_path / "exp" / "metrics" / "features-standard-s0.pt"
    stamp = metric.stat().st_mtime_ns
    assert main(["experiment", str(path), "--no-progress"]) == 0
    redone = json.loads((tmp_path / "exp" / "parts" / "features-standard-s0.json").read_text())
    assert metric.stat().st_mtime_ns == stamp and redone["settings"]["whiten"] is True
    assert 0.5 * trained <= redone["train_seconds"] <= trained  # the epochs' time when it was trained
    # ... but not under another training setting
    for training in ("standard", "few-shot"):
        (tmp_path / "exp" / "parts" / f"features-{training}-s0.json").unlink()
    retrained = dict(config, variants={"features": {**config["variants"]["features"], "mutual": True}})
    path.write_text(yaml.safe_dump(retrained, sort_keys=False))
    assert main(["experiment", str(path), "--no-progress"]) == 2
    assert "features-standard-s0.pt was trained with other mutual" in capsys.readouterr().err
    bad = dict(config, variants={"x": {"colour": 1}})
    path.write_text(yaml.safe_dump(bad))
    assert main(["experiment", str(path)]) == 2
    assert "unknown C2M setting(s) colour" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(COIL["source"]), reason="COIL-20 not found")
def test_the_transfer_experiment_learns_on_coil20_pixels_and_clusters_mnist_sets(tmp_path):
    config = {"method": "c2m", "protocol": "transfer", "out": str(tmp_path / "exp"), "train": {"dataset": COIL},
              "test": {"dataset": MNIST}, "train_size": 40, "test_size": 60, "test_datasets": 2, "check_datasets": 1,
              "max_clusters": 4, "trainings": {"standard": {"datasets": 3, "epochs": 1}},
              "settings": {"population": 10, "iterations": 2, "gae": False, "size_features": True,
                           "structure_features": True}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["experiment", str(path), "--no-progress"]) == 0
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    test = results["parts"]["c2m-standard-s0"]["test"]["test"]
    assert len(test["sets"]) == 2 and all(2 <= r["k_true"] <= 4 for r in test["sets"])
    assert 0 <= results["kmeans_true_k"]["test"]["ACC"] <= 1 and np.isfinite(test["NMI"])
    checks = results["parts"]["c2m-standard-s0"]["checks"]["test"]  # class names, not numbers: checks still run
    assert checks["rename_change"] < 1e-4 and len(checks["ranks"]) == 1


def test_training_warns_when_classes_are_about_the_size_of_the_neighbourhood():
    from deepclust.methods import C2M
    from deepclust.cluster.c2m import PRESETS
    from deepclust.methods.c2m_training import small_classes_hint

    moths_like, omniglot_like = np.repeat(np.arange(100), 11), np.repeat(np.arange(200), 20)
    images = C2M(**PRESETS["images"])  # 10 neighbours
    hint = small_classes_hint(moths_like, images)
    assert "median of 11 images" in hint and "--param n_neighbours=5" in hint
    assert small_classes_hint(omniglot_like, images) is None
    assert small_classes_hint(moths_like, C2M(**{**PRESETS["images"], "n_neighbours": 5})) is None
    assert small_classes_hint(np.repeat(np.arange(30), 5), C2M(**{**PRESETS["images"], "n_neighbours": 3})) is None
    assert small_classes_hint(moths_like, C2M(**PRESETS["paper"])) is None  # no structure features to mislead
    assert small_classes_hint(moths_like, C2M(**{**PRESETS["images"], "n_neighbours": "ten"})) is None
    with pytest.raises(DeepclustError, match="n_neighbours='ten' must be a whole number >= 1"):
        C2M(**{**PRESETS["images"], "n_neighbours": "ten"}).fit([(np.zeros((20, 2)), np.arange(20) % 2)])

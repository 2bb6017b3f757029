"""`deepclust train`, `deepclust experiment` and the Omniglot layout, end to end on real images."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import SHARED
from deepclust.cli import main
from deepclust.data import find_images, load_split
from deepclust.data.datasets import prepare_omniglot
from deepclust.errors import DeepclustError
from deepclust.experiments.core import load_experiment

OMNIGLOT = SHARED / "data" / "omniglot"

TINY_TRAIN = dict(backbone="test_efficientnet", weights="random", image_size=32, n_way=3, n_shot=2, n_query=2,
                  n_tasks=4, epochs=2, lr=0.05, batch_size=16)


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason="Omniglot not found")
def test_omniglot_is_laid_out_as_the_class_folders_of_the_shipped_split(tmp_path):
    dest = prepare_omniglot(OMNIGLOT, tmp_path / "omniglot")
    split = load_split("omniglot")
    counts = {}
    for record in find_images(dest):
        counts[record.folder] = counts.get(record.folder, 0) + 1
    assert set(counts) == set(split.classes("train")) | set(split.classes("val")) | set(split.classes("test"))
    assert (len(split.classes("train")), len(split.classes("val")), len(split.classes("test"))) == (201, 41, 400)
    assert {counts[c] for c in split.classes("train") + split.classes("val")} == {20}  # Greek, Latin written once
    assert {counts[c] for c in split.classes("test")} == {2}  # one training and one test image per run class
    before = os.path.getmtime(dest)
    assert prepare_omniglot(OMNIGLOT, dest) == dest and os.path.getmtime(dest) == before  # already there
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DeepclustError, match="is not an Omniglot folder prepared by deepclust"):
        prepare_omniglot(OMNIGLOT, tmp_path / "other")
    with pytest.raises(DeepclustError, match="does not hold Omniglot's images_background"):
        prepare_omniglot(tmp_path, tmp_path / "x")


def test_train_cli_writes_a_checkpoint_that_cluster_uses_with_weights(moth_split, tmp_path, capsys):
    images, split = moth_split
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**TINY_TRAIN, "images": str(images), "split": str(split)}))
    assert main(["-q", "train", str(config), "--out", str(tmp_path / "train"), "--alpha", "0.2", "--no-progress"]) == 0
    assert "best epoch" in capsys.readouterr().out
    best = tmp_path / "train" / "best.pt"
    assert main(["-q", "cluster", str(images), "--out", str(tmp_path / "run"), "--backbone", "test_efficientnet",
                 "--weights", str(best), "--image-size", "32", "--split", str(split), "--subset", "test",
                 "--labels", "folders", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resolved"]["weights"].startswith(f"file:{best}")
    assert summary["counts"]["classes"] == 2


def test_experiment_writes_table_1_and_figure_3_and_resumes_without_retraining(moth_split, tmp_path, capsys):
    images, split = moth_split
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "name": "moths8", "out": str(tmp_path / "exp"), "images": str(images), "split": str(split),
        "train": TINY_TRAIN, "classic": {"classic_images_per_epoch": 32}, "alphas": [0.0, 0.5], "seeds": 2,
    }))
    assert main(["-q", "experiment", str(config), "--no-progress"]) == 0
    out = tmp_path / "exp"
    table = (out / "table1.md").read_text()
    for row in ("| kmeans | Pretrained | - |", "| kmeans | Classic | - |", "| spectral | Episodic |",
                "| kmeans | Linear | - |", "| spectral | Episodic+linear |"):
        assert row in table
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert set(runs) == {"pretrained", "classic", "episodic-alpha0", "episodic-alpha0.5", "linear", "episodic+linear"}
    episodic = {k: v["val_CA"] for k, v in runs.items() if k.startswith("episodic-")}
    assert results["best_alpha_run"] == max(episodic, key=episodic.get)
    # the heads: one on the pretrained backbone, one on the chosen episodic model, each carried in its best.pt
    chosen = runs[results["best_alpha_run"]]["weights"]
    head_config = json.loads((out / "train" / "episodic+linear" / "train_summary.json").read_text())["config"]
    assert head_config["weights"] == chosen and runs["episodic+linear"]["alpha"] == runs[results["best_alpha_run"]]["alpha"]
    linear_config = json.loads((out / "train" / "linear" / "train_summary.json").read_text())["config"]
    assert linear_config["weights"] == runs["pretrained"]["weights"]  # the seeded random start, as the row above
    assert len(runs["classic"]["scores"]["spectral"]["runs"]) == 2
    assert (out / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runs["pretrained"]["weights"].endswith("initial.pt")  # random weights: the seeded start of every run
    stamp = os.path.getmtime(out / "train" / "classic" / "last.pt")
    capsys.readouterr()
    assert main(["-q", "experiment", str(config), "--no-progress"]) == 0
    assert os.path.getmtime(out / "train" / "classic" / "last.pt") == stamp
    again = json.loads((out / "results.json").read_text())["runs"]
    assert again["classic"]["scores"] == runs["classic"]["scores"]


@pytest.mark.parametrize("content, message", [
    ({"out": "x", "trainings": ["maml"]}, "unknown training.s. maml"),
    ({"out": "x", "trainings": ["episodic+linear"]}, "add 'episodic' to trainings"),
    ({"out": "x", "episodic": {"alpah": 0.1}}, "unknown option.s. alpah in section 'episodic'"),
    ({"images": "x"}, "sets no out"),
    ({"out": "x", "dataset": {"name": "omniglot"}}, "must be .name: omniglot, source: FOLDER."),
    ({"out": "x", "test_group_by": "run\\d+"}, "is not a regular expression with one group"),
    ({"out": "x", "cluster_params": {"spectral": {"n_neigbors": 2}}}, "SpectralClustering|n_neigbors"),
    ({"out": "x", "cluster_params": {"gmm": {}}}, "cluster_params names gmm, which is not in algorithms"),
])
def test_bad_experiment_configs_are_refused_up_front(tmp_path, content, message):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(DeepclustError, match=message):
        load_experiment(path)


def test_grouped_scores_cluster_each_group_on_its_own(tmp_path):
    """Two groups whose classes sit on the same two points: together they cannot be told
    apart (4 classes, 2 places), group by group each is perfectly separable."""
    import numpy as np

    from deepclust import runs
    from deepclust.experiments.core import grouped_scores

    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = [f"run{g}-class{c}" for g in (1, 2) for c in (0, 1) for _ in range(5)]
    X = np.concatenate([centres[c] + 0.01 * rng.standard_normal((5, 2)) for g in (1, 2) for c in (0, 1)])
    runs.write_embeddings(tmp_path, X)
    runs.write_assignments(tmp_path, [f"{i}.png" for i in range(20)], np.zeros(20, int), np.zeros(20), labels)
    runs.write_summary(tmp_path, {})
    scores = grouped_scores(str(tmp_path), ["kmeans", "spectral"], 2, r"^(run\d)-",
                            {"spectral": {"n_neighbors": 3}})
    for algorithm in ("kmeans", "spectral"):
        assert scores[algorithm].seeds == [0, 1]
        assert scores[algorithm].mean()["ARI"] == pytest.approx(1.0)
    with pytest.raises(DeepclustError, match="does not match test_group_by"):
        grouped_scores(str(tmp_path), ["kmeans"], 1, r"^(group\d)-")


MNIST = SHARED / "data" / "mnist"
COIL20 = SHARED / "data" / "coil20"


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST not found")
def test_mnist_idx_files_load_as_images_and_labels(tmp_path):
    import gzip

    import numpy as np

    from deepclust.data.datasets import load_mnist

    images, labels = load_mnist(MNIST)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the test set's well-known first digits
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = gzip.open(MNIST / "t10k-images-idx3-ubyte.gz").read()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])  # truncated, not gzipped
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DeepclustError, match="is truncated"):
        load_mnist(tmp_path)
    with pytest.raises(DeepclustError, match="has no train-images-idx3-ubyte"):
        load_mnist(tmp_path, subset="train")


@pytest.mark.skipif(not COIL20.is_dir(), reason="COIL-20 not found")
def test_coil20_loads_upright_images_of_20_objects():
    import numpy as np

    from deepclust.data.datasets import load_coil20

    images, labels = load_coil20(COIL20)
    assert images.shape == (1440, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels).tolist() == [72] * 20
    # each sample is stored column-major (README of ../shared/data): image = column.reshape(32, 32).T
    from scipy.io import loadmat

    mat = loadmat(COIL20 / "COIL20.mat")
    fea = mat["fea"] if mat["fea"].shape[0] == 1440 else mat["fea"].T
    assert np.array_equal(images[100], fea[100].reshape(32, 32).T.astype(np.float32))

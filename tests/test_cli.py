import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from PIL import Image

from conftest import FIVE_SPECIES, MOTHS, needs_moths
from deepclust.cli import main
from deepclust.metrics import adjusted_rand


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _cluster(*args):
    return main(["-q", "cluster", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def moth_run(moth_species_dir, tmp_path_factory):
    """One real run: five EU-moths species, one corrupt file, labels from folders."""
    root = tmp_path_factory.mktemp("input")
    for species in FIVE_SPECIES:
        os.symlink(moth_species_dir / species, root / species, target_is_directory=True)
    (root / "broken").mkdir()
    (root / "broken" / "bad.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path_factory.mktemp("run") / "run"
    code = _cluster(root, "--out", out, "--labels", "folders", "--image-size", "128", "--algorithm", "spectral")
    assert code == 0
    return root, out


def test_cluster_writes_the_run_folder(moth_run):
    root, out = moth_run
    assignments = _read_csv(out / "assignments.csv")
    assert list(assignments[0]) == ["path", "cluster", "distance", "label", "confidence"]
    assert len(assignments) == 57
    assert {row["label"] for row in assignments} == set(FIVE_SPECIES)
    assert all(os.path.isfile(row["path"]) and float(row["distance"]) >= 0 for row in assignments)
    assert len({row["cluster"] for row in assignments}) == 5
    skipped = _read_csv(out / "skipped.csv")
    assert [r["path"] for r in skipped] == [os.path.join(str(root), "broken", "bad.jpg")]
    assert "UnidentifiedImageError" in skipped[0]["reason"]
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (57, 1280) and embeddings.dtype == np.float32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["algorithm"] == "spectral" and summary["seed"] == 0
    assert summary["counts"]["images_found"] == 58 and summary["counts"]["images_skipped"] == 1
    assert summary["resolved"]["n_clusters_from"] == "number of classes"
    assert {"torch", "timm", "scikit-learn", "deepclust"} <= set(summary["versions"])
    assert summary["timings_seconds"]["embed"] > 0
    assert (out / "config.yaml").is_file()
    clusters = _read_csv(out / "clusters.csv")
    assert [int(r["size"]) for r in clusters] == [sum(a["cluster"] == r["cluster"] for a in assignments) for r in clusters]
    for r in clusters:  # the typical image is the member nearest the centre
        members = [a for a in assignments if a["cluster"] == r["cluster"]]
        assert r["typical"] == min(members, key=lambda a: float(a["distance"]))["path"]


def test_cluster_scores_real_moths_well_with_the_offline_backbone(moth_run):
    _, out = moth_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"CA", "ACC", "NMI", "AMI", "ARI", "n_clusters", "n_classes", "n_images"}
    assert (metrics["n_clusters"], metrics["n_classes"], metrics["n_images"]) == (5, 5, 57)
    # measured 0.83 ARI / 0.93 CA; chance is ARI ~0
    assert metrics["ARI"] > 0.6 and metrics["CA"] > 0.8
    rows = _read_csv(out / "assignments.csv")
    assert adjusted_rand([r["label"] for r in rows], [r["cluster"] for r in rows]) == pytest.approx(metrics["ARI"])


def test_a_second_run_reuses_every_embedding(moth_run, tmp_path):
    root, out = moth_run
    assert _cluster(root, "--out", out, "--labels", "folders", "--image-size", "128", "--algorithm", "kmeans", "--seed", "3") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["embeddings_reused"] == 57 and summary["counts"]["embeddings_computed"] == 0
    assert summary["config"]["algorithm"] == "kmeans" and summary["seed"] == 3


def test_evaluate_writes_avg_sd_tables_for_several_algorithms(moth_run, tmp_path, capsys):
    _, out = moth_run
    assert main(["-q", "evaluate", str(out), "--algorithm", "kmeans", "spectral", "--seeds", "3", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "evaluation.md").read_text()
    assert table.splitlines()[0].startswith("| Cluster method | k | CA AVG (SD) |")
    rows = _read_csv(tmp_path / "evaluation.csv")
    assert [r["algorithm"] for r in rows] == ["kmeans", "spectral"]
    assert all(0.5 < float(r["ARI_mean"]) <= 1.0 for r in rows)
    detail = json.loads((tmp_path / "evaluation.json").read_text())
    assert detail["algorithms"]["kmeans"]["seeds"] == [0, 1, 2]
    assert "| spectral | 5 |" in capsys.readouterr().out


def test_auto_n_clusters_estimates_the_five_species_and_writes_the_curve(moth_run, tmp_path, capsys):
    root, out = moth_run
    assert main(["cluster", str(root), "--out", str(out), "--labels", "folders", "--image-size", "128", "--no-progress",
                 "--algorithm", "spectral", "--n-clusters", "auto", "--k-max", "12"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    estimate = summary["resolved"]["k_estimate"]
    assert estimate["method"] == "eigengap" and [p["k"] for p in estimate["curve"]] == list(range(2, 13))
    assert summary["resolved"]["n_clusters"] == estimate["n_clusters"] == 5
    assert summary["resolved"]["n_clusters_from"] == "estimated (eigengap)"
    curve = _read_csv(out / "k_estimation.csv")
    assert [int(r["k"]) for r in curve] == list(range(2, 13))
    assert max(curve, key=lambda r: float(r["score"]))["k"] == "5"
    assert "clustered 57 images into 5 clusters (estimated (eigengap))" in capsys.readouterr().out
    # the next run of the folder with a given k leaves no stale curve behind
    assert _cluster(root, "--out", out, "--labels", "folders", "--image-size", "128", "--algorithm", "spectral") == 0
    assert not (out / "k_estimation.csv").exists()
    assert json.loads((out / "summary.json").read_text())["resolved"]["k_estimate"] is None


def test_density_algorithms_find_their_own_clusters_and_mark_noise(moth_run, tmp_path):
    root, _ = moth_run
    out = tmp_path / "hdb"
    assert _cluster(root, "--out", out, "--labels", "folders", "--image-size", "128", "--algorithm", "hdbscan",
                    "--param", "min_cluster_size=4") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["cluster_params"] == {"min_cluster_size": 4}
    assert summary["resolved"]["n_clusters_from"] == "the algorithm"
    rows = _read_csv(out / "assignments.csv")
    noise = [r for r in rows if r["cluster"] == "-1"]
    assert all(r["distance"] == "" for r in noise)
    assert all(float(r["distance"]) >= 0 for r in rows if r["cluster"] != "-1")
    found = len({r["cluster"] for r in rows} - {"-1"})
    assert summary["counts"]["clusters"] == found == summary["resolved"]["n_clusters"] >= 2
    assert summary["counts"]["noise"] == len(noise)


def test_evaluate_runs_every_registered_algorithm(moth_run, tmp_path):
    from deepclust.cluster import list_clusterers

    from deepclust.cluster.c2m import C2M, PRESETS

    _, out = moth_run
    names = list_clusterers()
    metric = tmp_path / "metric.pt"  # c2m needs a learned metric: a small one from labelled blob sets
    sets = [make_blobs(60, centers=k, n_features=8, random_state=k) for k in (2, 4, 6)]
    C2M(max_clusters=8, population=10, iterations=2, epochs=1, random_state=0, **PRESETS["transferable"]).fit(sets).save(metric)
    assert main(["-q", "evaluate", str(out), "--algorithm", *names, "--seeds", "2", "--out", str(tmp_path),
                 "--param", "min_samples=3", "--param", "eps=0.6", "--param", f"metric={metric}"]) == 0
    rows = {r["algorithm"]: r for r in _read_csv(tmp_path / "evaluation.csv")}
    assert set(rows) == set(names)
    assert rows["dbscan"]["n_clusters"] == "own" and rows["kmeans"]["n_clusters"] == "5"
    for name in ("kmeans", "spectral", "gmm", "agglomerative"):
        assert float(rows[name]["ARI_mean"]) > 0.5, name


def test_evaluate_refuses_a_parameter_no_algorithm_takes(moth_run, tmp_path, capsys):
    _, out = moth_run
    assert main(["evaluate", str(out), "--algorithm", "kmeans", "--param", "eps=0.3", "--out", str(tmp_path)]) == 2
    assert "no algorithm of kmeans has parameter eps" in capsys.readouterr().err


def test_config_file_options_are_used_and_command_line_wins(moth_species_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("n_clusters: 3\nimage_size: 64\nalgorithm: spectral\nlabels: folders\n")
    out = tmp_path / "run"
    assert main(["-q", "cluster", str(moth_species_dir), "--out", str(out), "--config", str(config), "--n-clusters", "4", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["image_size"] == 64 and summary["config"]["algorithm"] == "spectral"
    assert summary["resolved"]["n_clusters"] == 4


@needs_moths
def test_split_selects_the_classes_of_one_subset(tmp_path):
    split = tmp_path / "two.json"
    split.write_text(json.dumps({"subsets": {"test": ["mimas_tiliae", "tethea_or"], "train": ["sphinx_ligustri"]}}))
    out = tmp_path / "run"
    assert _cluster(MOTHS / "images", "--out", out, "--split", split, "--subset", "test", "--labels", "folders", "--image-size", "64") == 0
    labels = {r["label"] for r in _read_csv(out / "assignments.csv")}
    assert labels == {"mimas_tiliae", "tethea_or"}


def _small_folder(root, n=3):
    for i in range(n):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / "a" / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "args, message",
    [
        (lambda p: [p / "missing"], "image folder '.*missing' does not exist"),
        (lambda p: [p / "empty"], "has no images"),
        (lambda p: [p / "texts"], "has no images"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "5"], r"n_clusters=5 must be <= the number of images \(3\)"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "auto", "--k-method", "elbow"], "k_method='elbow' is not known; use one of: eigengap, silhouette"),
        (lambda p: [_small_folder(p / "few"), "--algorithm", "dbscan", "--param", "epsilon=0.3"], "dbscan has no parameter epsilon; its parameters are: eps, min_samples"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--param", "n_init=0"], r"n_init=0 must be an integer >= 1"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "0"], "must be a positive integer"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--k-min", "9", "--k-max", "4"], "k_max=4 must be >= k_min=9"),
        (lambda p: [_small_folder(p / "few")], "number of clusters is unknown; pass --n-clusters K"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--backbone", "resnet5O"], "unknown backbone 'resnet5O'; did you mean: resnet50"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--backbone", "resnet18", "--weights", p / "w.pt"], "does not fit backbone 'resnet18'"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--algorithm", "kmedoids"], "choose one of: agglomerative, c2m, dbscan, gmm, hdbscan, kmeans, optics, spectral"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--device", "cuda:7"], "use --device cpu|only"),
        (lambda p: [_small_folder(p / "few"), "--n-clusters", "2", "--split", "eu-moths"], "--split and --subset go together"),
    ],
)
def test_bad_input_is_a_one_line_error_with_the_fix_and_no_traceback(tmp_path, capsys, args, message):
    import re

    import torch

    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("hello")
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "w.pt")
    code = main(["cluster", *map(str, args(tmp_path)), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("deepclust: error: ")
    assert re.search(message, err[-1]), err[-1]
    assert not any("Traceback" in line for line in err)


def test_console_script_exits_non_zero_with_one_line_on_error(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "deepclust")
    proc = subprocess.run([exe, "cluster", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"deepclust: error: image folder '{tmp_path / 'nowhere'}' does not exist; check the path"


def test_evaluate_refuses_a_run_without_labels(tmp_path, capsys):
    folder = _small_folder(tmp_path / "img", 4)
    out = tmp_path / "run"
    assert _cluster(folder, "--out", out, "--n-clusters", "2", "--backbone", "test_efficientnet", "--weights", "random") == 0
    assert "label" not in _read_csv(out / "assignments.csv")[0]
    assert not (out / "metrics.json").exists()
    assert main(["evaluate", str(out)]) == 2
    assert "has no true labels" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "img")]) == 2
    assert "is not a finished run folder" in capsys.readouterr().err


def test_a_folder_of_only_unreadable_images_says_so_and_lists_them(tmp_path, capsys):
    (tmp_path / "img" / "a").mkdir(parents=True)
    for name in ("x.jpg", "y.png"):
        (tmp_path / "img" / "a" / name).write_bytes(b"not an image")
    out = tmp_path / "run"
    assert main(["cluster", str(tmp_path / "img"), "--out", str(out), "--n-clusters", "1", "--backbone", "test_efficientnet", "--weights", "random", "--no-progress"]) == 2
    assert "none of the 2 images could be read" in capsys.readouterr().err
    assert sorted(os.path.basename(r["path"]) for r in _read_csv(out / "skipped.csv")) == ["x.jpg", "y.png"]


def test_config_values_of_the_wrong_type_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: many\nn_clusters: 2\n")
    assert main(["cluster", str(_small_folder(tmp_path / "img")), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "batch_size='many' must be an integer >= 1" in capsys.readouterr().err
    config.write_text("n_clusters: 2\nbatchsize: 3\n")
    assert main(["cluster", str(tmp_path / "img"), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown config option(s) batchsize; known options:" in capsys.readouterr().err


@pytest.mark.slow
@needs_moths
def test_the_50_eu_moths_test_species_cluster_as_measured(tmp_path):
    """Default backbone at 224 px, Spectral, seed 0: ARI 0.424, CA 0.607 measured with
    deepclust's spectral clustering (scikit-learn's, used before issue 3, gave 0.366)."""
    out = tmp_path / "run"
    assert _cluster(MOTHS / "images", "--split", "eu-moths", "--subset", "test", "--labels", "folders", "--algorithm", "spectral", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_images"], metrics["n_classes"]) == (555, 50)
    assert 0.36 < metrics["ARI"] < 0.48 and 0.55 < metrics["CA"] < 0.66


def test_help_version_and_a_typo_answer_without_loading_torch_timm_or_scikit_learn():
    code = ("import sys\nfrom deepclust.cli import main\n"
            "for argv in (['--help'], ['--version'], ['clustr'], ['cluster', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'sklearn', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "invalid choice: 'clustr'" in done.stderr


def test_the_help_lists_every_registered_algorithm():
    from deepclust.cli import ALGORITHMS
    from deepclust.cluster import list_clusterers

    assert list(ALGORITHMS) == list_clusterers()


def test_quiet_and_verbose_work_before_and_after_the_command():
    from deepclust.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["-q", "evaluate", "run"]).quiet is True
    assert parser.parse_args(["evaluate", "run", "-q"]).quiet is True
    assert parser.parse_args(["cluster", "x", "--out", "y", "--verbose"]).verbose is True
    plain = parser.parse_args(["evaluate", "run"])
    assert (plain.quiet, plain.verbose) == (False, False)

"""Choosing k and the algorithm without labels (deepclust.selection, `deepclust select`,
`cluster --k-method generalization`), and images far from every cluster (`--unknown`)."""

import csv
import json
import os

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from conftest import MOTHS, needs_moths

from deepclust.cluster import Agglomerative, estimate_n_clusters
from deepclust.cluster.k_curve import KEstimate
from deepclust.cluster.space import isolated_images
from deepclust.errors import DeepclustError
from deepclust.selection import (
    Candidate,
    GeneralizationScore,
    LinearProbe,
    Selection,
    generalization_score,
    parse_ks,
    select,
    sweep,
)


@pytest.fixture(scope="module")
def blobs():
    """Six well-separated groups of 80 points in 16 dimensions, with anisotropic noise."""
    X, y = make_blobs(n_samples=480, centers=6, n_features=16, cluster_std=1.0, center_box=(-12, 12), random_state=3)
    return X.astype(np.float32), y


def test_the_probe_predicts_separable_groups_and_not_random_labels(blobs):
    X, y = blobs
    probe = LinearProbe(X, random_state=0)
    assert probe.accuracy(y) == 1.0
    shuffled = np.random.default_rng(0).permutation(y)
    assert probe.accuracy(shuffled) < 0.35  # chance is 1/6
    predicted = probe.predict(y.astype(str))  # any label type comes back as given
    assert predicted.dtype.kind == "U" and set(predicted) == set(y.astype(str))


def test_the_generalization_score_is_near_zero_on_data_without_clusters():
    X = np.random.default_rng(0).standard_normal((400, 12)).astype(np.float32)
    score = GeneralizationScore(X, random_state=0)
    from deepclust.cluster import KMeans

    for k in (2, 5, 10):
        assert abs(score(KMeans(n_clusters=k, random_state=0).fit_predict(X))) < 0.75, k  # within 2x either way: a few images on 400


def test_the_generalization_score_prefers_the_true_groups_to_merges_and_splits(blobs):
    X, y = blobs
    from deepclust.cluster import KMeans

    score = GeneralizationScore(X, random_state=0)
    true = score(y)
    merged = score(np.minimum(y, 1))  # 2 clusters, borders in empty space, but far fewer than there are
    split = score(KMeans(n_clusters=12, random_state=0).fit_predict(X))
    assert true > merged + 1.0 and true > split + 1.0  # e times fewer mistakes, and more
    assert generalization_score(X, y, random_state=0) == pytest.approx(true, abs=0.3)


def test_select_finds_k_and_every_criterion_scores_every_candidate(blobs, tmp_path):
    X, y = blobs
    seen = []
    sel = select(X, range(2, 11), ["kmeans", "agglomerative"], seed=0,
                 progress=lambda what, done, total: seen.append((done, total)))
    assert len(sel.candidates) == 18 and seen[-1] == (18, 18)
    for criterion in ("generalization", "stability", "silhouette"):
        assert sel.best(criterion).k == 6, criterion
    assert all(np.isfinite(list(c.scores.values())).all() for c in sel.candidates)
    # any labelling, here the true groups named as strings, scored by the same criteria: the
    # candidate at k = 6 is the same partition, so its scores are the same numbers
    truth = sel.score(np.array(["abcdef"[i] for i in y]))
    at_six = next(c for c in sel.candidates if c.k == 6 and c.algorithm == "kmeans")
    assert set(truth) == {"generalization", "silhouette", "eigengap"}
    for name, value in truth.items():
        assert value == pytest.approx(at_six.scores[name], rel=1e-6), name
    assert truth["generalization"] > max(c.scores["generalization"] for c in sel.candidates if c.k != 6)
    sel.write_csv(tmp_path / "selection.csv")
    sel.plot(tmp_path / "selection.png")
    rows = list(csv.DictReader(open(tmp_path / "selection.csv")))
    assert len(rows) == 18 and {"generalization", "stability", "silhouette", "eigengap", "k", "algorithm"} <= set(rows[0])
    assert (tmp_path / "selection.png").stat().st_size > 10_000


def test_the_sweeps_make_the_clusterings_cluster_makes(blobs):
    X, _ = blobs
    from sklearn.metrics import adjusted_rand_score

    from deepclust.cluster import SpectralClustering

    for k, labels, seconds in sweep(X, "agglomerative", [3, 6, 9]):  # the cached tree, cut at each k
        # the same partition (cut from the full tree, its clusters may be numbered otherwise)
        assert adjusted_rand_score(labels, Agglomerative(n_clusters=k).fit_predict(X)) == 1.0 and seconds >= 0
    # one graph, the first k of its top 8 eigenvectors; below 6 the top eigenvalues of six equal
    # blobs tie, so only k = 6 has one right answer to compare
    runs = {k: labels for k, labels, _ in sweep(X, "spectral", [6, 8], seed=0)}
    assert adjusted_rand_score(runs[6], SpectralClustering(n_clusters=6, random_state=0).fit_predict(X)) > 0.95
    assert len(np.unique(runs[8])) == 8


def _candidate(k, score, algorithm="kmeans"):
    return Candidate(algorithm, k, np.zeros(1, dtype=np.int64), 0.0, {"generalization": score})


def test_a_flat_curve_is_called_weak_and_names_its_runner_ups():
    flat = Selection([_candidate(10, 0.50), _candidate(20, 0.499), _candidate(30, 0.30), _candidate(40, 0.10)],
                     ("generalization",))
    assert flat.best().k == 10 and [c.k for c in flat.runner_ups()] == [20] and flat.weak()
    sharp = Selection([_candidate(10, 0.50), _candidate(11, 0.499), _candidate(30, 0.30), _candidate(40, 0.10)],
                      ("generalization",))
    assert [c.k for c in sharp.runner_ups()] == [11] and not sharp.weak()  # a neighbouring k is no doubt
    curve = KEstimate(n_clusters=10, method="silhouette", ks=np.array([10, 20, 30]), scores=np.array([0.5, 0.499, 0.1]))
    assert curve.near_ties() == [20] and curve.weak()


def test_ks_are_read_as_ranges_or_lists_and_bad_ones_refused():
    assert parse_ks("10:200") == list(range(10, 201, 10))
    assert parse_ks("2:12") == list(range(2, 13))
    assert parse_ks("5:20:5") == [5, 10, 15, 20]
    assert parse_ks("3,5,8") == [3, 5, 8]
    for bad in ("ten", "1:5", "20:10", "5:10:0", ""):
        with pytest.raises(DeepclustError, match="--k"):
            parse_ks(bad)
    with pytest.raises(DeepclustError, match="2..479"):
        select(np.zeros((480, 2), np.float32), [2, 480])
    with pytest.raises(DeepclustError, match="finds its own"):
        select(np.zeros((480, 2), np.float32), [2], ["dbscan"])
    with pytest.raises(DeepclustError, match="metric"):
        select(np.zeros((480, 2), np.float32), [2], criteria=["c2m"])


def test_estimate_n_clusters_by_generalization_and_stability(blobs):
    X, _ = blobs
    for method in ("generalization", "stability"):
        est = estimate_n_clusters(X, method=method, k_min=2, k_max=12, random_state=0)
        assert est.n_clusters == 6 and list(est.ks) == list(range(2, 13)), method
    wide = estimate_n_clusters(X, method="generalization", k_min=2, k_max=150, random_state=0)  # coarse, then fine
    assert wide.n_clusters == 6 and len(wide.ks) < 60


def test_isolated_images_are_the_ones_far_from_every_other(blobs):
    X, _ = blobs
    assert isolated_images(X).sum() <= 0.03 * len(X)  # compact groups: (almost) nobody is far
    far = np.array([[60.0] * 16, [-60.0] * 16, [60.0, -60.0] * 8], dtype=np.float32)
    flagged = isolated_images(np.vstack([X, far]))
    assert flagged[-3:].all() and flagged[:-3].sum() <= 0.03 * len(X)


def test_select_and_k_method_generalization_from_the_command_line(tmp_path, capsys):
    """A run folder of the blobs (as `cluster` writes one), then `select` on it."""
    from deepclust.cli import main

    run = _blob_run(tmp_path)
    out = tmp_path / "sel"
    assert main(["select", str(run), "--out", str(out), "--k", "2:10", "--algorithm", "kmeans", "spectral",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "chosen by generalization: k = 6" in printed and "scored 18 candidates on 480 images" in printed
    choice = json.loads((out / "selection.json").read_text())
    assert choice["chosen"]["k"] == 6 and set(choice["criteria"]) == {"generalization", "stability", "silhouette",
                                                                       "eigengap"}
    assert (out / "selection.png").is_file() and len((out / "selection.csv").read_text().splitlines()) == 19
    assert main(["select", str(run), "--out", str(out), "--k", "2:10", "--backbone", "resnet18"]) == 2
    assert "is a run embedded with" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "neither an image folder nor a run folder" in capsys.readouterr().err


def _blob_run(tmp_path):
    """The blobs written as a finished run folder (assignments, embeddings, summary)."""
    from deepclust import runs

    X, y = make_blobs(n_samples=480, centers=6, n_features=16, cluster_std=1.0, center_box=(-12, 12), random_state=3)
    run = tmp_path / "run"
    run.mkdir()
    paths = [f"img/{i:04d}.png" for i in range(len(X))]
    distances = np.zeros(len(X))
    runs.write_assignments(run, paths, y, distances, None)
    runs.write_embeddings(run, X.astype(np.float32))
    runs.write_summary(run, {"config": {"normalize": False}, "resolved": {"backbone": "blobs"}})
    return run


@needs_moths
def test_cluster_unknown_puts_an_image_unlike_any_other_in_cluster_minus_one(tmp_path, capsys):
    """Five moth species and one image of noise: the noise goes to cluster -1, few moths do."""
    from PIL import Image

    from deepclust import runs
    from deepclust.cli import main

    root = tmp_path / "photos"
    root.mkdir()
    species = sorted(p.name for p in (MOTHS / "images").iterdir())[:5]
    for name in species:
        os.symlink(MOTHS / "images" / name, root / name, target_is_directory=True)
    (root / "odd").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "odd" / "noise.png")
    out = tmp_path / "run"
    assert main(["cluster", str(root), "--out", str(out), "--n-clusters", "5", "--image-size", "96", "--unknown",
                 "--no-progress"]) == 0
    assert "as unknown (cluster -1)" in capsys.readouterr().out
    run = runs.load_run(out)
    unknown = [p for p, c in zip(run.paths, run.clusters) if c == -1]
    assert any(p.endswith("noise.png") for p in unknown) and len(unknown) <= 0.15 * len(run.paths)
    assert run.summary["counts"]["unknown"] == len(unknown)
    assert main(["cluster", "--embeddings", str(out / "embeddings.npy"), "--out", str(tmp_path / "r2"),
                 "--unknown"]) == 2
    assert "--unknown" in capsys.readouterr().err


@needs_moths
def test_cluster_chooses_k_from_the_images_whose_class_is_known(tmp_path, capsys):
    """Eight moth species, four of them in a labelled folder: k is chosen by how well the
    clustering recovers those four (--labelled DIR), and bad sources are refused in one line."""
    from deepclust import runs
    from deepclust.cli import main

    root = tmp_path / "photos"
    (root / "known").mkdir(parents=True)
    species = sorted(p.name for p in (MOTHS / "images").iterdir())[:8]
    for i, name in enumerate(species):
        os.symlink(MOTHS / "images" / name, (root / "known" if i < 4 else root) / name, target_is_directory=True)
    out = tmp_path / "run"
    assert main(["cluster", str(root), "--out", str(out), "--n-clusters", "auto", "--labelled", str(root / "known"),
                 "--k-min", "2", "--k-max", "16", "--image-size", "96", "--no-progress"]) == 0
    resolved = runs.load_run(out).summary["resolved"]
    assert resolved["n_clusters_from"] == "estimated (labels)" and 4 <= resolved["n_clusters"] <= 16
    scores = {p["k"]: p["score"] for p in resolved["k_estimate"]["curve"]}
    assert scores[resolved["n_clusters"]] > 0.5 and scores[resolved["n_clusters"]] > scores[2]  # the known four, found
    (tmp_path / "elsewhere").mkdir()
    for bad, message in ((tmp_path / "elsewhere", "holds none of the images"), ("eu-moths:nosuch", "nosuch"),
                         ("nowhere", "is not a feedback.json")):
        assert main(["cluster", str(root), "--out", str(tmp_path / "r2"), "--n-clusters", "auto", "--labelled",
                     str(bad), "--image-size", "96", "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert main(["cluster", str(root), "--out", str(tmp_path / "r3"), "--n-clusters", "8", "--labelled",
                 str(root / "known")]) == 2
    assert "--n-clusters auto" in capsys.readouterr().err

"""What a user looks at and keeps: the HTML report (opened in a real Chromium), the
per-cluster export, predicting new images into a run, and the ONNX backbone."""

import csv
import json
import os

import numpy as np
import pytest

from conftest import MOTHS, launch_chromium, needs_chromium, needs_moths, watch_page
from deepclust.cli import main

SECTIONS = ("settings", "scores", "map", "sizes", "clusters", "confusion", "skipped")


def _read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def moths_test_run(tmp_path_factory):
    """The 50 EU-moths test species clustered with the default backbone (at 128 px for
    speed), with one unreadable file beside them, and the report made at the end."""
    if not (MOTHS / "images").is_dir():
        pytest.skip(f"EU moths not found at {MOTHS}")
    from deepclust.data import load_split

    root = tmp_path_factory.mktemp("moths50")
    for species in load_split("eu-moths").classes("test"):
        os.symlink(MOTHS / "images" / species, root / species, target_is_directory=True)
    (root / "zz_broken").mkdir()
    (root / "zz_broken" / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["-q", "cluster", str(root), "--out", str(out), "--labels", "folders", "--n-clusters", "50",
                 "--image-size", "128", "--no-progress", "--report"]) == 0
    return root, out


@needs_moths
def test_the_report_holds_every_section_and_its_figures(moths_test_run):
    _, out = moths_test_run
    folder = out / "report"
    for name in ("report.html", "map.png", "sizes.png", "montages.png", "confusion.png"):
        assert (folder / name).stat().st_size > 1000, name
    page = (folder / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in page
    assert "zz_broken/bad.jpg" in page.replace(os.sep, "/")  # the skipped file is listed
    assert page.count("<div class='cluster'") == 50  # every cluster (fewer than the 60 shown by default)
    assert "src='http" not in page and "src=\"http" not in page  # self-contained: nothing fetched
    assert 200_000 < (folder / "report.html").stat().st_size < 5_000_000
    # what a reader needs: how sure each cluster is, its typical image, what it mostly holds,
    # captions that keep the species folder, thumbnails that open the file
    assert page.count(" · confidence ") == 50 and page.count("<b>typical</b>") == 50
    assert page.count(" · mostly ") == 50 and "(0% of its images)" not in page
    assert page.count("<a href='file://") == page.count("<figure>") > 50  # every thumbnail opens its file
    captions = [part.split("</figcaption>")[0].replace("<b>typical</b><br>", "").split("<br>")[0]
                for part in page.split("<figcaption>")[1:]]
    assert all(c.replace(os.sep, "/").count("/") == 1 for c in captions)  # species/file, not a bare file name


@needs_moths
@needs_chromium
def test_the_report_renders_in_headless_chromium_without_errors(moths_test_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    _, out = moths_test_run
    url = (out / "report" / "report.html").resolve().as_uri()
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            errors, requests = watch_page(page)
            page.goto(url, wait_until="load")
            images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.id)")
            laid_out = page.evaluate("[...document.querySelectorAll('.cluster figure img')]"
                                     ".filter(i => i.getBoundingClientRect().width > 0).length")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # opens offline
    assert headings == list(SECTIONS)
    thumbnails = [i for i in images if i[1] <= 96 and i[2] <= 96]
    assert len(images) >= 4 + 300 and all(complete and w > 0 and h > 0 for complete, w, h in images)
    assert len(thumbnails) >= 300  # montages of the clusters, decoded by the browser
    assert laid_out == len(thumbnails)  # and laid out on the page
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10  # a page was drawn, not a blank


@needs_moths
def test_export_makes_a_folder_per_cluster_and_never_overwrites(moths_test_run, tmp_path, capsys):
    _, out = moths_test_run
    to = tmp_path / "by-cluster"
    assert main(["export", str(out), "--to", str(to)]) == 0
    assignments = _read_csv(out / "assignments.csv")
    mapping = _read_csv(to / "mapping.csv")
    assert [r["path"] for r in mapping] == [r["path"] for r in assignments]
    folders = sorted(p.name for p in to.iterdir() if p.is_dir())
    assert len(folders) == 50 and folders[0] == "cluster-000"
    for row in mapping:
        target = to / row["exported"]
        assert target.is_symlink() and os.path.samefile(target, row["path"])
        assert row["exported"].startswith(f"cluster-{int(row['cluster']):03d}/")
    assert main(["export", str(out), "--to", str(to)]) == 2  # exists and is not empty
    assert "never writes over your files" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(out), "--to", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    copies = tmp_path / "copies"
    copies.mkdir()  # an empty folder is fine
    assert main(["export", str(out), "--to", str(copies), "--mode", "copy"]) == 0
    some = _read_csv(copies / "mapping.csv")[0]
    assert not (copies / some["exported"]).is_symlink()
    assert (copies / some["exported"]).read_bytes() == open(some["path"], "rb").read()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left behind


def test_export_keeps_two_images_of_the_same_name_and_lists_missing_ones(tmp_path):
    from deepclust import runs
    from deepclust.jobs.export import export_clusters

    from PIL import Image

    files = []
    for shade, folder in enumerate(("a", "b", "c")):
        (tmp_path / "in" / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4), (shade * 100,) * 3).save(tmp_path / "in" / folder / "x.jpg")
        files.append(str(tmp_path / "in" / folder / "x.jpg"))
    run = tmp_path / "run"
    run.mkdir()
    runs.write_assignments(run, files, np.array([0, 0, -1]), np.array([0.1, 0.2, np.nan]))
    runs.write_embeddings(run, np.zeros((3, 2)))
    runs.write_summary(run, {"command": "cluster", "config": {"images": str(tmp_path / "in")}})
    os.unlink(files[2])  # gone since the run
    done = export_clusters(run, tmp_path / "out")
    assert done == {"images": 2, "missing": 1, "refused": 0, "clusters": 1, "folder": str(tmp_path / "out"),
                    "mode": "link"}
    assert sorted(os.listdir(tmp_path / "out" / "cluster-000")) == ["x.jpg", "x__2.jpg"]
    assert (tmp_path / "out" / "cluster-000" / "x__2.jpg").read_bytes() == (tmp_path / "in" / "b" / "x.jpg").read_bytes()
    assert [r["exported"] for r in _read_csv(tmp_path / "out" / "mapping.csv")] == [
        "cluster-000/x.jpg", "cluster-000/x__2.jpg", ""]


@needs_moths
def test_predict_puts_a_runs_own_images_back_in_their_clusters(moths_test_run, tmp_path):
    root, out = moths_test_run
    assert main(["-q", "predict", str(out), str(root), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    predicted = {r["path"]: r for r in _read_csv(tmp_path / "p" / "predictions.csv")}
    assignments = _read_csv(out / "assignments.csv")
    assert len(predicted) == len(assignments) == 555
    # k-means ends with every image at its nearest centre: predict must reproduce the run exactly
    assert all(predicted[r["path"]]["cluster"] == r["cluster"] for r in assignments)
    assert all(abs(float(predicted[r["path"]]["distance"]) - float(r["distance"])) < 1e-4 for r in assignments)
    assert all(predicted[r["path"]]["far"] == "0" for r in assignments)  # each is its own nearest image
    assert [r["path"] for r in _read_csv(tmp_path / "p" / "skipped.csv")] == [str(root / "zz_broken" / "bad.jpg")]
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["counts"]["images_predicted"] == 555 and summary["backbone"] == "tf_efficientnet_lite0"


def test_predict_flags_images_far_from_every_clustered_image():
    from deepclust.jobs.predict import cluster_model
    from deepclust.runs import Run
    from sklearn.datasets import make_blobs

    X, y = make_blobs(600, centers=[[0, 0, 0], [6, 0, 0], [0, 6, 0]], cluster_std=1.0, random_state=0)
    run = Run("r", [str(i) for i in range(500)], y[:500], X[:500].astype(np.float32), None,
              {"command": "cluster", "config": {"normalize": False}})
    model = cluster_model(run, far_quantile=0.95)
    clusters, distances, nearest, far = model.assign(X[500:])
    assert np.mean(clusters == y[500:]) > 0.97 and np.all(distances >= 0)
    assert far.mean() < 0.15  # new points of the same blobs: about 5% (the run's own rate)
    stranger = np.random.default_rng(0).normal([30, 30, 30], 1.0, size=(50, 3))
    assert model.assign(stranger)[3].all()  # a blob the run never saw: every point flagged


def test_predict_refuses_a_folder_that_holds_no_clustering_network(tmp_path, capsys):
    from deepclust import runs

    runs.write_assignments(tmp_path, ["a.jpg"], np.array([0]), np.array([0.0]))
    runs.write_embeddings(tmp_path, np.zeros((1, 4)))
    runs.write_summary(tmp_path, {"command": "train", "method": "episodic"})
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "predict needs a run of `deepclust cluster` or of an end-to-end method" in capsys.readouterr().err


def test_onnx_export_of_the_default_backbone_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import torch

    from deepclust.features.backbones import create_backbone
    from deepclust.jobs.export import export_onnx

    path = tmp_path / "lite0.onnx"
    done = export_onnx(path, backbone="tf_efficientnet_lite0", image_size=128)
    assert done.num_features == 1280 and done.max_abs_diff is not None and done.max_abs_diff < 1e-4 * done.max_abs_output
    meta = json.loads((tmp_path / "lite0.onnx.json").read_text())
    assert meta["image_size"] == 128 and meta["preprocessing"]["mean"] == pytest.approx([0.498, 0.498, 0.498], abs=0.01)
    model = create_backbone("tf_efficientnet_lite0", image_size=128).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch size is free
        x = torch.randn(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch))
        got = session.run(["embeddings"], {"images": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, 1280)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@needs_moths
def test_export_onnx_of_a_run_uses_its_backbone_and_size(moths_test_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _, out = moths_test_run
    assert main(["-q", "export-onnx", str(out), "--out", str(tmp_path / "m.onnx")]) == 0
    captured = capsys.readouterr()
    assert "largest difference from PyTorch" in captured.out
    assert "torch.onnx" not in captured.err  # the exporter's progress stays out of the user's terminal
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "m.onnx").st_mode & 0o777 == 0o666 & ~umask  # shareable, like every other output
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["image_size"] == 128
    assert main(["export-onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "give a run folder or --backbone" in capsys.readouterr().err


def test_predict_by_neighbours_follows_clusters_of_any_shape():
    from sklearn.datasets import make_moons

    from deepclust.jobs.predict import cluster_model
    from deepclust.runs import Run

    X, y = make_moons(700, noise=0.05, random_state=0)
    run = Run("r", [str(i) for i in range(500)], y[:500], X[:500].astype(np.float32), None,
              {"command": "cluster", "config": {"normalize": False}})
    model = cluster_model(run)
    by_centre = np.mean(model.assign(X[500:])[0] == y[500:])
    by_neighbours = np.mean(model.assign(X[500:], "neighbours")[0] == y[500:])
    assert by_neighbours == 1.0 and by_centre < 0.9  # a moon's tip is nearer the other moon's centre
    with pytest.raises(Exception, match="assign="):
        model.assign(X[500:], "vote")


@pytest.mark.skipif(not (MOTHS.parent / "coil20" / "COIL20.mat").is_file(), reason="COIL-20 not found")
def test_the_report_of_an_end_to_end_run_on_a_benchmark_array_shows_its_images(tmp_path):
    from deepclust import runs
    from deepclust.data.datasets import load_coil20
    from deepclust.jobs.report import ReportOptions, write_report

    source = str(MOTHS.parent / "coil20")
    _, y = load_coil20(source)
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    runs.write_assignments(run, [f"coil20/{i:05d}" for i in range(len(y))], y.astype(int) - 1,
                           rng.random(len(y)), [str(int(v)) for v in y])
    runs.write_embeddings(run, rng.normal(size=(len(y), 20)))
    runs.write_skipped(run, [])
    runs.write_summary(run, {"command": "train", "method": "mmdc", "config": {"dataset": {"name": "coil20", "source": source}}})
    page = open(write_report(run, options=ReportOptions(map_method="pca")), encoding="utf-8").read()
    assert page.count("data:image/jpeg") == 20 * 8 and "unreadable" not in page  # thumbnails from the array
    assert "<h2 id='confusion'>" in page


def test_near_duplicate_groups_join_bursts_within_a_cluster_and_never_across():
    from deepclust.jobs.report import near_duplicate_groups

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 32))
    clusters = np.repeat([0, 1, 2], 20)
    burst = X[3] + 0.01 * rng.normal(size=(2, 32))  # two more shots of image 3, in its cluster
    X[[4, 5]] = burst
    X[25] = X[7] + 0.01 * rng.normal(size=32)  # a near copy of image 7, but in another cluster
    X[40] = X[41] * 3.0  # the same direction at another length: cosine 1
    groups = near_duplicate_groups(X, clusters, threshold=0.97)
    assert groups == {0: [[3, 4, 5]], 2: [[40, 41]]}
    assert near_duplicate_groups(X, clusters, threshold=1.0 - 1e-9) == {2: [[40, 41]]}


def test_the_report_of_a_density_run_shows_noise_last_and_unreadable_images_as_placeholders(tmp_path):
    from deepclust import runs
    from deepclust.jobs.report import ReportOptions, cluster_montages, write_report

    rng = np.random.default_rng(0)
    clusters = np.r_[np.zeros(30, int), np.ones(20, int), -np.ones(40, int)]  # the noise is the largest group
    distances = np.where(clusters >= 0, rng.random(90), np.nan)
    montages = cluster_montages(clusters, distances, per_cluster=3)
    assert [m["cluster"] for m in montages] == [0, 1, -1] and [m["size"] for m in montages] == [30, 20, 40]
    first = montages[0]["members"]
    assert list(distances[first]) == sorted(distances[clusters == 0])[:3]  # most typical first
    runs.write_assignments(tmp_path, [str(tmp_path / f"gone{i}.jpg") for i in range(90)], clusters, distances)
    runs.write_embeddings(tmp_path, rng.normal(size=(90, 8)))
    runs.write_skipped(tmp_path, [])
    runs.write_summary(tmp_path, {"command": "cluster", "config": {"algorithm": "hdbscan"}})
    page = open(write_report(tmp_path, options=ReportOptions(per_cluster=3)), encoding="utf-8").read()
    assert "<h3>Noise · 40 images" in page and page.index("id='cluster-1'") < page.index("id='cluster--1'")
    assert page.count("unreadable") == 9 and "id='confusion'" not in page  # no labels: no confusion matrix
    with pytest.raises(Exception, match="map_method"):
        write_report(tmp_path, options=ReportOptions(map_method="umap"))

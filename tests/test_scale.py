"""Embedding and clustering at scale: the embedding store, Dask workers and the local path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.datasets import make_blobs, make_circles
from sklearn.metrics import adjusted_rand_score

from conftest import MOTHS, needs_moths
from deepclust.cluster import at_scale
from deepclust.features import store as stores
from deepclust.jobs import embed as embed_job
from deepclust.cli import main
from deepclust.cluster import KMeans, SpectralClustering
from deepclust.cluster.spectral import top_eigenvectors, weighted_normalized_affinity
from deepclust.parallel.executors import LocalExecutor, open_executor, parse_scheduler
from deepclust.errors import DeepclustError


@pytest.fixture(scope="module")
def dask_pair():
    """A 2-worker Dask LocalCluster (127.0.0.1, no dashboard), shared by this module's tests."""
    pytest.importorskip("distributed")
    with open_executor("local[2]") as executor:
        yield executor


@pytest.fixture(scope="module")
def many_moths(tmp_path_factory):
    """About 300 real EU-moths images (24 species, symbolic links) and one corrupt file."""
    if not (MOTHS / "images").is_dir():
        pytest.skip(f"EU moths not found at {MOTHS}")
    root = tmp_path_factory.mktemp("many-moths")
    for species in sorted(os.listdir(MOTHS / "images"))[:24]:
        os.symlink(MOTHS / "images" / species, root / species, target_is_directory=True)
    (root / "zz_broken").mkdir()
    (root / "zz_broken" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@needs_moths
def test_two_dask_workers_embed_exactly_what_one_process_embeds(many_moths, dask_pair, tmp_path):
    from deepclust.features.backbones import create_backbone
    from deepclust.data import find_images
    from deepclust.features.extract import extract_embeddings

    table = embed_job.embed_images(str(many_moths), str(tmp_path / "store"), "tf_efficientnet_lite0", image_size=64,
                               executor=dask_pair, partition_size=32, batch_size=16, progress=False)
    records = find_images(many_moths)
    assert len(records) >= 250 and table.paths == [r.path for r in records]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker (Dask gives a worker process one thread)
    try:
        reference = extract_embeddings(records, create_backbone("tf_efficientnet_lite0", image_size=64),
                                       batch_size=16, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(table.read(), reference.vectors)  # bit for bit
    assert table.skipped == [(records[i].path, reason) for i, reason in reference.skipped]
    assert [os.path.basename(p) for p, _ in table.skipped] == ["broken.jpg"]
    parts = [json.loads(p.read_text()) for p in (tmp_path / "store" / "parts").iterdir()]
    assert len({p["worker"] for p in parts}) == 2  # both workers took partitions
    assert {p["device"] for p in parts} == {"cuda" if torch.cuda.is_available() else "cpu"}  # device "auto"
    # a dask array reads the store as it is
    array = table.array()
    assert array.shape == (len(records), 1280) and array.chunks[0][0] == 32
    assert np.isnan(array[table.valid.argmin()].compute()).all()  # the corrupt image's row
    # clustering skips that row: one label per readable image
    result = at_scale.kmeans_at_scale(table, 24, dask_pair, random_state=0)
    assert len(result.labels) == int(table.valid.sum()) == len(records) - 1


@needs_moths
def test_an_interrupted_embedding_resumes_with_only_the_unfinished_partition(moth_species_dir, tmp_path, monkeypatch):
    store = str(tmp_path / "store[1]")  # a name that is also a glob pattern
    real = embed_job.embed_partition

    def dies_on_part_1(task, *args):
        if task["part"] == 1:
            raise RuntimeError("worker lost")
        return real(task, *args)

    monkeypatch.setattr(embed_job, "embed_partition", dies_on_part_1)
    with pytest.raises(DeepclustError, match="1 of 3 partitions are not done.*run the same command again"):
        embed_job.embed_images(str(moth_species_dir), store, "tf_efficientnet_lite0", image_size=64, partition_size=24,
                           progress=False)
    with pytest.raises(DeepclustError, match="unfinished .* run the same `deepclust embed` command again"):
        stores.open_store(store)
    parts = tmp_path / "store[1]" / "parts"
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000.json", "part-000002.json"]
    stamps = {p.name: p.stat().st_mtime_ns for p in parts.iterdir()}
    monkeypatch.setattr(embed_job, "embed_partition", real)
    table = embed_job.embed_images(str(moth_species_dir), store, "tf_efficientnet_lite0", image_size=64,
                               partition_size=24, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in parts.iterdir() if p.name in stamps} == stamps  # not redone
    whole = embed_job.embed_images(str(moth_species_dir), str(tmp_path / "whole"), "tf_efficientnet_lite0",
                               image_size=64, partition_size=24, progress=False)
    assert np.array_equal(table.read(), whole.read())
    with pytest.raises(DeepclustError, match="other images or another backbone"):
        embed_job.embed_images(str(moth_species_dir), store, "tf_efficientnet_lite0", image_size=96, partition_size=24,
                           progress=False)


def _store(tmp_path, X, name="blobs", partition_size=4096):
    return stores.write_store(tmp_path / name, X, partition_size=partition_size)


def test_kmeans_and_spectral_at_scale_agree_with_one_machine_on_dask_and_without(tmp_path, dask_pair):
    X, y = make_blobs(20_000, n_features=16, centers=10, cluster_std=1.0, random_state=0)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)  # the run clusters L2-normalised vectors
    table = _store(tmp_path, X)
    one_k = KMeans(10, random_state=0).fit(Xn).labels_
    one_s = SpectralClustering(10, random_state=0).fit(Xn).labels_
    local = at_scale.kmeans_at_scale(table, 10, LocalExecutor(), lloyd_passes=2, random_state=0)
    on_dask = at_scale.kmeans_at_scale(table, 10, dask_pair, lloyd_passes=2, random_state=0)
    assert np.array_equal(local.labels, on_dask.labels)  # the same tasks, wherever they run
    assert adjusted_rand_score(one_k, on_dask.labels) >= 0.95
    # Lloyd passes over the full data improve centres trained on a small sample
    coarse = at_scale.kmeans_at_scale(table, 10, dask_pair, sample_size=100, lloyd_passes=3, random_state=1)
    history = np.array(coarse.inertia_history)
    assert np.all(np.diff(history) <= 1e-6 * history[0]) and history[-1] < history[0]
    assert np.array_equal(on_dask.counts, np.bincount(on_dask.labels, minlength=10))
    spectral = at_scale.spectral_at_scale(table, 10, dask_pair, random_state=0)
    assert adjusted_rand_score(one_s, spectral.labels) >= 0.95 and spectral.facts["n_groups"] == 1000


def test_spectral_at_scale_follows_rings_that_kmeans_cuts(tmp_path, dask_pair):
    X2, y = make_circles(20_000, factor=0.4, noise=0.04, random_state=0)
    X = np.hstack([X2 + 3.0, np.zeros((len(X2), 6))])  # shifted: normalisation would fold the rings
    table = _store(tmp_path, X, "rings")
    labels = at_scale.spectral_at_scale(table, 2, dask_pair, normalize=False, random_state=0).labels
    assert adjusted_rand_score(y, labels) >= 0.95
    km = at_scale.kmeans_at_scale(table, 2, dask_pair, normalize=False, random_state=0)
    assert adjusted_rand_score(y, km.labels) < 0.1


def test_a_store_clustered_with_n_clusters_auto_estimates_k_on_a_sample(tmp_path, capsys):
    X, y = make_blobs(20_000, n_features=16, centers=6, cluster_std=1.0, random_state=3)
    store = _store(tmp_path, X, partition_size=3_000).folder
    run = tmp_path / "run"
    argv = ["-q", "cluster", "--embeddings", store, "--out", str(run), "--no-normalize", "--no-progress"]
    assert main(argv + ["--n-clusters", "auto", "--k-max", "12"]) == 0
    summary = json.loads((run / "summary.json").read_text())["resolved"]
    assert summary["n_clusters"] == 6
    assert summary["n_clusters_from"] == "estimated (silhouette) on a sample of 10000 vectors"
    curve = (run / "k_estimation.csv").read_text().splitlines()
    assert curve[0] == "k,score" and len(curve) == 1 + 11  # k = 2..12
    best = max(curve[1:], key=lambda row: float(row.split(",")[1]))
    assert best.startswith("6,") and summary["k_estimate"]["n_clusters"] == 6
    from deepclust.runs import load_run

    assert adjusted_rand_score(y, load_run(run).clusters) >= 0.99
    # spectral estimates by its eigengap, here on a smaller sample
    assert main(argv + ["--algorithm", "spectral", "--n-clusters", "auto", "--k-max", "12",
                        "--param", "k_sample_size=2000", "--param", "n_groups=200"]) == 0
    summary = json.loads((run / "summary.json").read_text())["resolved"]
    assert summary["n_clusters"] == 6 and summary["n_clusters_from"] == "estimated (eigengap) on a sample of 2000 vectors"
    # a run with a given k leaves no curve of an earlier estimate behind; the sample size is for auto only
    assert main(argv + ["--n-clusters", "6"]) == 0 and not (run / "k_estimation.csv").exists()
    capsys.readouterr()
    assert main(argv + ["--n-clusters", "6", "--param", "k_sample_size=500"]) == 2
    assert "k_sample_size is for --n-clusters auto only" in capsys.readouterr().err


def test_weighted_affinity_is_the_graph_with_every_node_repeated():
    """Node i standing for w_i points: the top of the spectrum equals that of the graph in
    which node i is copied w_i times (copies joined to every copy of each neighbour)."""
    rng = np.random.default_rng(0)
    n = 12
    W = sp.random(n, n, density=0.4, random_state=1)
    W = ((W + W.T) > 0).astype(float)
    W.setdiag(0)
    weights = rng.integers(1, 5, size=n)
    copies = np.repeat(np.arange(n), weights)
    expanded = sp.csr_matrix(W)[copies][:, copies]
    degree = np.asarray(expanded.sum(1)).ravel()
    normalised = sp.diags(degree ** -0.5) @ expanded @ sp.diags(degree ** -0.5)
    want = np.sort(np.linalg.eigvalsh(normalised.toarray()))[::-1][:4]
    got, _ = top_eigenvectors(weighted_normalized_affinity(W, weights), 4, solver="dense")
    np.testing.assert_allclose(got, want, atol=1e-10)
    with pytest.raises(DeepclustError, match="sample_weight must hold 5 positive numbers"):
        SpectralClustering(2).fit(np.zeros((5, 2)) + np.arange(5)[:, None], sample_weight=[1, 1, 0, 1, 1])


@needs_moths
def test_embed_then_cluster_a_store_gives_an_ordinary_run_folder(moth_species_dir, tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["-q", "embed", str(moth_species_dir), "--out", str(store), "--image-size", "64",
                 "--partition-size", "16", "--fast-decode", "--no-progress"]) == 0
    assert "into" in capsys.readouterr().out
    assert main(["-q", "cluster", "--embeddings", str(store), "--out", str(run), "--algorithm", "spectral",
                 "--labels", "folders", "--param", "n_groups=20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "clustered" in out and "ACC" in out
    for name in ("assignments.csv", "skipped.csv", "summary.json", "metrics.json", "config.yaml"):
        assert (run / name).is_file(), name
    from deepclust.runs import load_run

    loaded = load_run(run)
    table = stores.open_store(store)
    assert loaded.paths == table.paths and np.array_equal(loaded.embeddings, table.read())
    assert loaded.summary["resolved"]["backbone"] == "tf_efficientnet_lite0"
    assert loaded.summary["resolved"]["at_scale"]["n_groups"] == 20
    assert loaded.summary["config"]["fast_decode"] is True  # predict decodes new images as the store did
    assert table.info["backbone"]["signature"].endswith("|draft146")
    assert np.all(np.isfinite(loaded.distances))
    # report and predict work on it as on any run
    assert main(["-q", "report", str(run), "--map", "pca"]) == 0
    assert main(["-q", "predict", str(run), str(moth_species_dir), "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    import csv

    with open(tmp_path / "p" / "predictions.csv", encoding="utf-8", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    own = dict(zip(loaded.paths, loaded.clusters))
    assert len(rows) == len(own) and all(float(rows[p]["nearest_image_distance"]) < 1e-5 for p in own)


def test_a_local_cluster_listens_on_localhost_only_without_dashboard_and_leaves_no_process():
    psutil = pytest.importorskip("psutil")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with open_executor("local[1]") as executor:
        info = executor.client.scheduler_info(n_workers=-1)
        assert executor.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(address.startswith("tcp://127.0.0.1:") for address in info["workers"])
        cluster = executor.cluster
        port = info["services"]["dashboard"]  # the scheduler's HTTP server (health checks), not a dashboard
        assert port != 8787 and cluster.scheduler.http_server is not None
        assert not any("/status" in str(rule.matcher) for rule in cluster.scheduler.http_application.default_router.rules)
        for socket_ in cluster.scheduler.http_server._sockets.values():
            assert socket_.getsockname()[0] == "127.0.0.1"
        started = {p.pid for p in psutil.Process().children(recursive=True)
                   if "resource_tracker" not in " ".join(p.cmdline())} - before  # Python's own helper stays
        assert started  # the worker's process
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in started if psutil.pid_exists(pid)], timeout=10)
    assert not alive


def test_clear_errors_for_scale_misuse(tmp_path, capsys):
    assert parse_scheduler(None) == ("none", None) and parse_scheduler("local[3]") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", None)
    with pytest.raises(DeepclustError, match="not understood"):
        parse_scheduler("local2")
    table = _store(tmp_path, np.random.default_rng(0).normal(size=(50, 4)), "small", partition_size=16)
    assert table.blocks() == [(0, 16), (16, 32), (32, 48), (48, 50)]
    cases = [
        (["cluster", "--embeddings", str(tmp_path / "small"), "--out", str(tmp_path / "r"), "--algorithm", "dbscan"],
         "needs all vectors in one process"),
        (["cluster", "--embeddings", str(tmp_path / "small"), "--out", str(tmp_path / "r"), "--param", "eps=1"],
         "has no parameter eps"),
        (["cluster", "--embeddings", str(tmp_path / "small"), "--out", str(tmp_path / "r")], "pass --n-clusters K"),
        (["cluster", "--embeddings", str(tmp_path), "--out", str(tmp_path / "r"), "--n-clusters", "2"],
         "not an embedding store"),
        (["cluster", str(tmp_path), "--out", str(tmp_path / "r"), "--scheduler", "local[2]"], "needs --embeddings"),
    ]
    for argv, message in cases:
        assert main(["-q"] + argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(DeepclustError, match="already holds an embedding store"):
        _store(tmp_path, np.zeros((3, 2)), "small")


def test_a_running_dask_scheduler_is_reached_by_its_address(tmp_path):
    """`dask scheduler` and `dask worker` started apart, as on a cluster: only --scheduler changes."""
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    X, _ = make_blobs(3_000, n_features=8, centers=4, random_state=0)
    table = _store(tmp_path, X, partition_size=1_000)
    file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                                         "--scheduler-file", str(file)], stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(100):
            if file.is_file() and file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(file.read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                   "--host", "127.0.0.1"], stderr=subprocess.DEVNULL)
        with open_executor(address) as executor:
            executor.client.wait_for_workers(1, timeout=60)
            assert len(executor.client.scheduler_info(n_workers=-1)["workers"]) == 1
            on_cluster = at_scale.kmeans_at_scale(table, 4, executor, random_state=0)
        here = at_scale.kmeans_at_scale(table, 4, LocalExecutor(), random_state=0)
        assert np.array_equal(on_cluster.labels, here.labels)
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)

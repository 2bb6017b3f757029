"""The clustering engine: one contract over every registered algorithm, then each piece."""

import functools
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import SpectralClustering as SkSpectral
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from deepclust.cluster import (
    GaussianMixture,
    KMeans,
    SpectralClustering,
    create_clusterer,
    estimate_n_clusters,
    knn_graph,
    list_clusterers,
    takes_n_clusters,
    top_eigenvectors,
)
import deepclust.cluster._lloyd as engine
from deepclust.cluster._lloyd import kmeans_plusplus, lloyd
from deepclust.cluster.neighbors import affinity_matrix
from deepclust.cluster.spectral import normalized_affinity
from deepclust.errors import DeepclustError

#: Parameters that fit the contract data (16-d blobs, sd 0.5) for the density methods.
DENSITY_PARAMS = {"dbscan": {"eps": 3.0, "min_samples": 3}, "optics": {"min_samples": 5, "min_cluster_size": 10}, "hdbscan": {"min_cluster_size": 5}}


def _blobs(n=240, k=6, seed=0, std=0.5):
    return make_blobs(n_samples=n, centers=k, n_features=16, cluster_std=std, random_state=seed)


@functools.lru_cache(maxsize=None)
def _c2m_metric() -> str:
    """A small C2M metric (the transferable setting) learned from six labelled 16-d blob sets,
    for the contract tests of the ``c2m`` clusterer, which needs one."""
    from deepclust.cluster.c2m import C2M, PRESETS

    train = [make_blobs(80, centers=k, n_features=16, cluster_std=0.5, random_state=k) for k in range(2, 8)]
    path = os.path.join(tempfile.mkdtemp(prefix="c2m-contract-"), "metric.pt")
    C2M(max_clusters=12, population=20, iterations=3, epochs=1, random_state=0, **PRESETS["transferable"]).fit(train).save(path)
    return path


def _make(name, k, **kw):
    params = {"n_clusters": k} if takes_n_clusters(name) else dict(DENSITY_PARAMS.get(name, {}))
    if name == "c2m":
        params["metric"] = _c2m_metric()
    params.update(kw)
    return create_clusterer(name, **params)


# ------------------------------------------------------------ the contract, for every algorithm


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_recovers_well_separated_blobs(name):
    X, y = _blobs()
    est = _make(name, 6, random_state=0)
    labels = est.fit_predict(X)
    assert labels.shape == (240,) and labels.dtype == np.int64
    assert np.array_equal(labels, est.labels_)
    assert est.n_clusters_ == 6
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_is_deterministic_for_a_seed(name):
    X, _ = _blobs(k=12, seed=3)
    X = X + np.random.default_rng(0).normal(scale=3.0, size=X.shape)  # overlapping: seeds matter
    a = _make(name, 12, random_state=7).fit_predict(X)
    b = _make(name, 12, random_state=7).fit_predict(X)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [n for n in list_clusterers() if hasattr(create_clusterer(n), "predict")])
def test_fit_and_predict_agree_up_to_a_relabelling(name):
    X, _ = _blobs(k=5, seed=1, std=1.5)
    est = _make(name, 5, random_state=0).fit(X)
    assert adjusted_rand_score(est.labels_, est.predict(X)) == pytest.approx(1.0)
    with pytest.raises(DeepclustError, match=r"shape \(n_samples, 16\)"):
        est.predict(X[:, :3])


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_explains_bad_input(name):
    X, _ = _blobs(n=20)
    if takes_n_clusters(name):
        with pytest.raises(DeepclustError, match="n_clusters=30 must be <= n_samples=20"):
            _make(name, 30).fit(X)
        with pytest.raises(DeepclustError, match="n_clusters='many' must be an integer >= 1"):
            _make(name, "many").fit(X)
    with pytest.raises(DeepclustError, match="2-d array"):
        _make(name, 2).fit(X[:, 0])
    with pytest.raises(DeepclustError, match="at least one sample"):
        _make(name, 1).fit(X[:0])
    for bad in (np.nan, np.inf, -np.inf):
        Xb = X.copy()
        Xb[3, 1] = bad
        with pytest.raises(DeepclustError, match=r"NaN or infinite values in 1 row"):
            _make(name, 2).fit(Xb)


def test_finite_values_whose_sum_overflows_are_still_accepted():
    # the quick test of the data sums it in float64; huge but finite float64 values overflow
    # that sum, and the element-wise test must then clear them
    X = np.ones((6, 3))
    X[:3, 0] = 1.5e308
    assert np.array_equal(KMeans(n_clusters=2)._validate_data(X), X)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_labels_a_single_sample(name):
    X = np.array([[0.5, -1.0, 2.0]])
    labels = _make(name, 1, random_state=0).fit_predict(X)
    assert labels.shape == (1,)
    # a lone point is its own cluster, or noise for the density methods
    assert labels[0] == 0 or (not takes_n_clusters(name) and labels[0] == -1)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_groups_exact_duplicates_together(name):
    rng = np.random.default_rng(0)
    points = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    y = rng.permutation(np.repeat(np.arange(3), 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn may warn about identical points
        labels = _make(name, 3, random_state=0).fit_predict(points[y])
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)


def test_create_clusterer_lists_valid_names_for_an_unknown_one():
    names = ", ".join(list_clusterers())
    with pytest.raises(DeepclustError, match=f"unknown clustering algorithm 'kmeens'; choose one of: {names}"):
        create_clusterer("kmeens")
    assert set(list_clusterers()) >= {"kmeans", "spectral", "gmm", "agglomerative", "dbscan", "optics", "hdbscan"}


def test_bad_parameters_are_named_with_what_is_allowed():
    X, _ = _blobs(n=30)
    with pytest.raises(DeepclustError, match=r"backend='cuda' is not known; choose one of: auto, torch, faiss, sklearn"):
        KMeans(3, backend="cuda").fit(X)
    with pytest.raises(DeepclustError, match=r"eigen_solver='magic' is not known"):
        SpectralClustering(3, eigen_solver="magic").fit(X)
    with pytest.raises(DeepclustError, match=r"eps=-1 must be a number >= 0.0"):
        create_clusterer("dbscan", eps=-1).fit(X)


# ------------------------------------------------------------ k-means


def _plain_lloyd(X, centres, n_iter=500):
    """Textbook Lloyd in float64 numpy: the reference the bounded version must reproduce."""
    C = centres.astype(np.float64).copy()
    labels = None
    for _ in range(n_iter):
        new = ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        C = np.stack([X[labels == j].mean(0) if (labels == j).any() else C[j] for j in range(len(C))])
    return labels


@pytest.mark.parametrize("bounds", ["elkan", "hamerly"])
@pytest.mark.parametrize("resum", [0.0, 1.0])  # the centre sums summed afresh whenever a point moves, or never
def test_bounded_lloyd_reaches_the_same_fixed_point_as_plain_lloyd(bounds, resum, monkeypatch):
    monkeypatch.setattr(engine, "RESUM_FRACTION", resum)
    X, _ = _blobs(n=600, k=10, seed=4, std=3.0)  # overlapping, so many points move
    X = X.astype(np.float64)
    init = X[np.random.default_rng(1).choice(600, 10, replace=False)]
    ours = lloyd(torch.from_numpy(X), torch.from_numpy(init), max_iter=500, tol=0.0, bounds=bounds)
    expected = _plain_lloyd(X, init)
    assert np.array_equal(ours.labels.numpy(), expected)
    assert min(ours.recomputed[1:]) < 0.5  # the bounds did skip points
    inertia = sum(((X[expected == j] - X[expected == j].mean(0)) ** 2).sum() for j in range(10))
    assert ours.inertia == pytest.approx(inertia, rel=1e-9)


def test_kmeans_plusplus_seeds_are_distinct_rows_of_the_data():
    X, _ = _blobs(n=300, k=6)
    Xt = torch.from_numpy(X.astype(np.float32))
    seeds = kmeans_plusplus(Xt, 6, np.random.default_rng(0)).numpy()
    rows = {tuple(r) for r in X.astype(np.float32)}
    assert all(tuple(s) in rows for s in seeds)
    assert len({tuple(s) for s in seeds}) == 6
    # D^2 sampling on well-separated blobs puts one seed in each blob
    nearest_blob = SkKMeans(6, n_init=10, random_state=0).fit(X).predict(seeds.astype(X.dtype))
    assert sorted(nearest_blob) == list(range(6))


def test_kmeans_matches_scikit_learn_quality_on_overlapping_blobs():
    X, y = _blobs(n=3000, k=20, seed=2, std=2.5)
    X = X.astype(np.float32)
    ours = [KMeans(20, n_init=1, random_state=s).fit(X) for s in range(5)]
    theirs = [SkKMeans(20, n_init=1, random_state=s).fit(X) for s in range(5)]
    assert np.mean([o.inertia_ for o in ours]) <= 1.01 * np.mean([t.inertia_ for t in theirs])
    assert np.mean([adjusted_rand_score(y, o.labels_) for o in ours]) >= np.mean(
        [adjusted_rand_score(y, t.labels_) for t in theirs]) - 0.02
    # inertia_ is the sum of squared distances to the returned centres
    o = ours[0]
    assert o.inertia_ == pytest.approx(((X - o.cluster_centers_[o.labels_]) ** 2).sum(), rel=1e-4)


@pytest.mark.parametrize("backend", ["torch", "faiss", "sklearn"])
def test_every_kmeans_backend_recovers_blobs(backend):
    X, y = _blobs(n=500, k=8, seed=5)
    km = KMeans(8, n_init=2, backend=backend, random_state=0).fit(X)
    assert adjusted_rand_score(y, km.labels_) == pytest.approx(1.0)
    assert km.cluster_centers_.shape == (8, 16)


def test_kmeans_presolve_on_a_subsample_still_converges_on_all_points():
    X, _ = _blobs(n=4000, k=4, seed=6, std=2.0)
    km = KMeans(4, n_init=1, max_points_per_centroid=100, label_tol=0.0, tol=0.0, random_state=0).fit(X)
    # a fixed point of Lloyd on the whole data: every point at its nearest centre,
    # every centre the mean of its points
    assert np.array_equal(km.predict(X), km.labels_)
    means = np.stack([X[km.labels_ == j].mean(0) for j in range(4)])
    assert np.allclose(means, km.cluster_centers_, atol=1e-5)


def test_kmeans_default_restarts_on_small_data_and_seeds_once_on_large_data(monkeypatch):
    """n_init="auto": ten seedings below 20,000 rows, one above (counted through the Lloyd
    calls); a first solve on a subsample only when asked for."""
    import deepclust.cluster.kmeans as kmeans_module  # deferred: the module whose lloyd is counted

    calls = []
    real = kmeans_module.lloyd

    def counting(X, *args, **kwargs):
        calls.append(X.shape[0])
        return real(X, *args, **kwargs)

    monkeypatch.setattr(kmeans_module, "lloyd", counting)
    X, _ = _blobs(n=3000, k=8, seed=6, std=2.0)
    KMeans(8, random_state=0).fit(X)
    assert calls == [3000] * 10  # ten restarts
    calls.clear()
    big, _ = _blobs(n=24_000, k=4, seed=6, std=2.0)
    km = KMeans(4, random_state=0).fit(big)
    assert calls == [24_000]  # one seeding
    assert np.array_equal(km.predict(big), km.labels_)
    calls.clear()
    KMeans(4, max_points_per_centroid=256, random_state=0).fit(big)
    assert calls == [1024, 24_000]  # a first solve on 256 x 4 rows, then all rows
    with pytest.raises(DeepclustError, match="n_init"):
        KMeans(4, n_init="some").fit(X)


def test_kmeans_predict_assigns_new_points_to_the_nearest_centre():
    X, _ = _blobs()
    km = KMeans(n_clusters=6, random_state=0).fit(X)
    assert km.cluster_centers_.shape == (6, 16)
    near = km.cluster_centers_ + 0.01
    assert np.array_equal(km.predict(near), np.arange(6))


def test_kmeans_accepts_a_numpy_generator_as_random_state():
    X, y = _blobs()
    labels = KMeans(n_clusters=6, random_state=np.random.default_rng(0)).fit_predict(X)
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)


# ------------------------------------------------------------ neighbours and spectral


def test_exact_knn_graph_matches_scikit_learn_and_never_lists_the_point_itself():
    X, _ = _blobs(n=500, seed=7, std=2.0)
    idx, dist = knn_graph(X, 8, method="exact")
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=9).fit(X).kneighbors(X)
    assert np.allclose(dist, ref_dist[:, 1:], atol=1e-3)
    assert (idx != np.arange(500)[:, None]).all()
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(idx, ref_idx[:, 1:])]) > 0.99


def test_approximate_knn_graph_finds_most_true_neighbours():
    X, y = make_blobs(n_samples=6000, centers=30, n_features=64, cluster_std=1.0, random_state=0)
    _, ref = NearestNeighbors(n_neighbors=11).fit(X).kneighbors(X)
    # cell probing alone (no PCA: d <= pca_dim)
    idx, dist = knn_graph(X, 10, method="approximate", pca_dim=64, random_state=0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref[:, 1:])])
    assert recall > 0.9
    assert (idx != np.arange(6000)[:, None]).all()
    assert (np.diff(dist, axis=1) >= 0).all()
    # with PCA the neighbours within a blob change, but they stay in the blob
    idx, _ = knn_graph(X, 10, method="approximate", pca_dim=32, random_state=0)
    assert np.mean(y[idx] == y[:, None]) > 0.99


def test_approximate_knn_graph_in_query_blocks_finds_the_same_neighbours(monkeypatch):
    """Big cells are searched in blocks of queries (bounded memory) with the same result."""
    import deepclust.cluster.neighbors as neighbors_module  # deferred: the module whose limit is lowered

    X, _ = make_blobs(n_samples=3000, centers=10, n_features=16, cluster_std=1.0, random_state=1)
    whole = knn_graph(X, 5, method="approximate", random_state=0)
    monkeypatch.setattr(neighbors_module, "MAX_PRODUCT", 700)  # a handful of queries per block
    blocked = knn_graph(X, 5, method="approximate", random_state=0)
    assert np.allclose(whole[1], blocked[1], atol=1e-3)  # the same distances, up to float rounding
    same = [set(a) == set(b) or np.allclose(sorted(da), sorted(db), atol=1e-3)  # a near tie may swap
            for a, b, da, db in zip(whole[0], blocked[0], whole[1], blocked[1])]
    assert all(same)
    assert (blocked[0] != np.arange(3000)[:, None]).all()


def test_chebyshev_eigensolver_agrees_with_dense_and_finds_repeated_eigenvalues():
    # 5 disconnected blobs: eigenvalue 1 five times, which ARPACK's Lanczos misses
    X, _ = make_blobs(n_samples=2500, centers=5, n_features=8, cluster_std=0.3, center_box=(-50, 50), random_state=0)
    idx, dist = knn_graph(X, 10)
    S, _ = normalized_affinity(affinity_matrix(idx, dist))
    values, vectors = top_eigenvectors(S, 8, solver="chebyshev", random_state=0, tol=1e-7)
    exact, exact_vectors = top_eigenvectors(S, 8, solver="dense")
    assert np.allclose(values[:5], 1.0, atol=1e-4)
    assert np.allclose(values, exact, atol=1e-3)
    # the wanted subspace is the same: principal angles near zero
    cosines = np.linalg.svd(vectors[:, :5].T @ exact_vectors[:, :5], compute_uv=False)
    assert cosines.min() > 0.999


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_spectral_clustering_separates_moons_where_kmeans_cannot_and_agrees_with_scikit_learn():
    X, y = make_moons(n_samples=300, noise=0.05, random_state=0)
    ours = SpectralClustering(n_clusters=2, random_state=0).fit_predict(X)
    theirs = SkSpectral(n_clusters=2, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, ours) == pytest.approx(1.0)
    assert adjusted_rand_score(y, ours) >= adjusted_rand_score(y, theirs)
    assert adjusted_rand_score(y, KMeans(n_clusters=2, random_state=0).fit_predict(X)) < 0.5


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("solver", ["chebyshev", "lobpcg", "dense"])
def test_spectral_clustering_is_at_least_as_good_as_scikit_learn_on_noisy_blobs(solver):
    X, y = make_blobs(n_samples=2000, centers=15, n_features=32, cluster_std=3.5, random_state=3)
    ours = [adjusted_rand_score(y, SpectralClustering(15, eigen_solver=solver, random_state=s).fit_predict(X)) for s in range(3)]
    theirs = [adjusted_rand_score(y, SkSpectral(15, affinity="nearest_neighbors", random_state=s).fit_predict(X)) for s in range(3)]
    assert np.mean(ours) >= np.mean(theirs) - 0.01


def test_spectral_clustering_on_the_approximate_graph_matches_the_exact_one():
    X, y = make_blobs(n_samples=4000, centers=20, n_features=64, cluster_std=2.0, random_state=1)
    exact = SpectralClustering(20, neighbors="exact", random_state=0).fit_predict(X)
    approx = SpectralClustering(20, neighbors="approximate", random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, approx) >= adjusted_rand_score(y, exact) - 0.02


# ------------------------------------------------------------ the number of clusters


@pytest.mark.parametrize("k", [3, 7, 12])
def test_eigengap_recovers_the_number_of_well_separated_clusters(k):
    X, _ = make_blobs(n_samples=60 * k, centers=k, n_features=10, cluster_std=0.6, center_box=(-30, 30), random_state=k)
    estimate = estimate_n_clusters(X, method="eigengap", k_max=20, random_state=0)
    assert estimate.n_clusters == k
    assert list(estimate.ks) == list(range(2, 21))
    assert int(np.argmax(estimate.scores)) == k - 2


@pytest.mark.parametrize("k", [3, 7])
def test_silhouette_recovers_the_number_of_well_separated_clusters(k):
    X, _ = make_blobs(n_samples=50 * k, centers=k, n_features=10, cluster_std=0.6, center_box=(-30, 30), random_state=k)
    estimate = estimate_n_clusters(X, method="silhouette", k_max=12, random_state=0)
    assert estimate.n_clusters == k
    assert estimate.curve()[0] == {"k": 2, "score": pytest.approx(estimate.scores[0])}


def test_silhouette_samples_large_data():
    X, _ = make_blobs(n_samples=20_000, centers=4, n_features=5, cluster_std=0.5, center_box=(-30, 30), random_state=0)
    assert estimate_n_clusters(X, method="silhouette", k_max=6, sample_size=1000, random_state=0).n_clusters == 4


@pytest.mark.parametrize("name", [n for n in list_clusterers() if takes_n_clusters(n)])
def test_auto_n_clusters_is_estimated_and_reported(name):
    X, y = make_blobs(n_samples=300, centers=4, n_features=6, cluster_std=0.5, center_box=(-30, 30), random_state=2)
    est = create_clusterer(name, n_clusters="auto", random_state=0).fit(X)
    assert est.n_clusters_ == 4
    assert est.k_estimate_.n_clusters == 4 and len(est.k_estimate_.scores) == len(est.k_estimate_.ks)
    assert adjusted_rand_score(y, est.labels_) == pytest.approx(1.0)


def test_density_methods_report_noise_and_their_own_number_of_clusters():
    X, y = _blobs(n=300, k=4, seed=9)
    X = np.vstack([X, np.full((3, 16), 100.0) + np.arange(3)[:, None] * 40])  # three far outliers
    est = create_clusterer("hdbscan", min_cluster_size=10).fit(X)
    assert est.n_clusters_ == 4
    assert (est.labels_[-3:] == -1).all()
    assert est.noise_fraction_ == pytest.approx(3 / 303)


def test_gaussian_mixture_predicts_like_scikit_learn():
    from sklearn.mixture import GaussianMixture as SkGM

    X, _ = _blobs(n=400, k=4, seed=8, std=2.0)
    ours = GaussianMixture(4, random_state=0).fit(X)
    theirs = SkGM(4, covariance_type="diag", random_state=0).fit(X)
    assert np.array_equal(ours.labels_, theirs.predict(X))
    assert np.allclose(ours.predict_proba(X), theirs.predict_proba(X))


# ------------------------------------------------------------ at scale (slow)


def _sphere_blobs(n, dim, k, spread, seed=0):
    """Unit-sphere Gaussian clusters, as benchmarks/clustering.py makes them."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(k, size=n)
    X = centres[y] + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


@pytest.mark.slow
def test_spectral_clustering_on_the_approximate_graph_at_scale_beats_kmeans():
    X, y = _sphere_blobs(40_000, 512, 80, spread=3.5)
    spectral = SpectralClustering(80, random_state=0).fit_predict(X)  # > 12,000 points: approximate graph
    kmeans = KMeans(80, n_init=1, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, spectral) > 0.95
    assert adjusted_rand_score(y, spectral) > adjusted_rand_score(y, kmeans) + 0.05


@pytest.mark.slow
def test_kmeans_at_scale_is_as_good_as_scikit_learn():
    X, y = _sphere_blobs(60_000, 256, 60, spread=2.5)
    ours = [adjusted_rand_score(y, KMeans(60, n_init=1, random_state=s).fit_predict(X)) for s in range(3)]
    theirs = [adjusted_rand_score(y, SkKMeans(60, n_init=1, random_state=s).fit_predict(X)) for s in range(3)]
    assert np.mean(ours) >= np.mean(theirs) - 0.01


def test_k_from_the_labels_a_user_has_finds_the_number_of_classes_including_unlabelled_ones():
    from deepclust.cluster.k_estimation import estimate_n_clusters

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (8, 10))
    y = np.repeat(np.arange(8), 40)
    X = centres[y] + rng.normal(0, 1, (len(y), 10))
    labels = np.where((y < 4) & (rng.random(len(y)) < 0.5), y, -1)  # half the images of 4 of the 8 classes
    est = estimate_n_clusters(X, method="labels", labels=labels, k_min=2, k_max=30, random_state=0)
    assert est.n_clusters == 8 and est.method == "labels"
    assert len(est.ks) < 29  # a coarse grid refined around the best, not every k
    names = np.array([None if v < 0 else f"species{v}" for v in labels], dtype=object)  # names, None unknown
    assert estimate_n_clusters(X, method="labels", labels=names, k_max=30, random_state=0).n_clusters == 8
    with pytest.raises(DeepclustError, match="needs labelled rows of at least 2 classes"):
        estimate_n_clusters(X, method="labels", labels=np.full(len(y), -1), k_max=30)

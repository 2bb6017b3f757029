import numpy as np
import pytest
from sklearn.cluster import SpectralClustering as SkSpectral
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import adjusted_rand_score

from deepclust.cluster import KMeans, SpectralClustering, create_clusterer, list_clusterers
from deepclust.errors import DeepclustError


def _blobs(n=240, k=6, seed=0):
    return make_blobs(n_samples=n, centers=k, n_features=16, cluster_std=0.5, random_state=seed)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_recovers_well_separated_blobs(name):
    X, y = _blobs()
    est = create_clusterer(name, n_clusters=6, random_state=0)
    labels = est.fit_predict(X)
    assert labels.shape == (240,) and labels.dtype == np.int64
    assert np.array_equal(labels, est.labels_)
    assert est.n_clusters_ == 6
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_is_deterministic_for_a_seed(name):
    X, _ = _blobs(k=12, seed=3)
    X = X + np.random.default_rng(0).normal(scale=3.0, size=X.shape)  # overlapping: seeds matter
    a = create_clusterer(name, n_clusters=12, random_state=7).fit_predict(X)
    b = create_clusterer(name, n_clusters=12, random_state=7).fit_predict(X)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", list_clusterers())
def test_every_clusterer_explains_bad_input(name):
    X, _ = _blobs(n=20)
    with pytest.raises(DeepclustError, match="n_clusters=30 must be <= n_samples=20"):
        create_clusterer(name, n_clusters=30).fit(X)
    with pytest.raises(DeepclustError, match="2-d array"):
        create_clusterer(name, n_clusters=2).fit(X[:, 0])
    X[3, 1] = np.nan
    with pytest.raises(DeepclustError, match="NaN"):
        create_clusterer(name, n_clusters=2).fit(X)


def test_create_clusterer_lists_valid_names_for_an_unknown_one():
    with pytest.raises(DeepclustError, match="unknown clustering algorithm 'kmeens'; choose one of: kmeans, spectral"):
        create_clusterer("kmeens")


def test_spectral_clustering_separates_moons_where_kmeans_cannot_and_agrees_with_scikit_learn():
    X, y = make_moons(n_samples=300, noise=0.05, random_state=0)
    ours = SpectralClustering(n_clusters=2, random_state=0).fit_predict(X)
    theirs = SkSpectral(n_clusters=2, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, ours) == pytest.approx(1.0)
    assert adjusted_rand_score(y, ours) >= adjusted_rand_score(y, theirs)
    assert adjusted_rand_score(y, KMeans(n_clusters=2, random_state=0).fit_predict(X)) < 0.5


def test_kmeans_predict_assigns_new_points_to_the_nearest_centre():
    X, _ = _blobs()
    km = KMeans(n_clusters=6, random_state=0).fit(X)
    assert np.array_equal(km.predict(X), km.labels_)
    assert km.cluster_centers_.shape == (6, 16)
    near = km.cluster_centers_ + 0.01
    assert np.array_equal(km.predict(near), np.arange(6))


def test_kmeans_accepts_a_numpy_generator_as_random_state():
    X, y = _blobs()
    labels = KMeans(n_clusters=6, random_state=np.random.default_rng(0)).fit_predict(X)
    assert adjusted_rand_score(y, labels) == pytest.approx(1.0)

"""C2M's pieces: input standardisation, the clique-graph convolution, the clustering
embedding, the critic and the Cross-Entropy Method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from deepclust.errors import DeepclustError
from deepclust.cluster.c2m import (Critic, GraphAutoencoder, cem_search, clip_weights, clustering_embedding,
                                   nearest_neighbours, propagate, relabel, standardize)
from deepclust.losses import wgan_critic_loss


def test_standardize_pads_small_and_projects_large_dimensions():
    rng = np.random.default_rng(0)
    flat = standardize(rng.normal(size=(50, 2)) * 7 + 3, input_dim=8)
    assert flat.shape == (50, 8) and torch.all(flat[:, 2:] == 0)
    assert torch.allclose(flat.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.isclose(flat.pow(2).sum(1).mean(), torch.tensor(1.0), atol=1e-5)
    wide = rng.normal(size=(40, 100))
    wide[:, 0] *= 50  # the main direction of variation survives the projection
    low = standardize(wide, input_dim=4)
    assert low.shape == (40, 4) and abs(np.corrcoef(low[:, 0].numpy(), wide[:, 0])[0, 1]) > 0.99
    with pytest.raises(DeepclustError, match="NaN or infinite"):
        standardize(np.array([[0.0, np.nan], [1.0, 2.0]]), 4)


def test_propagate_is_the_normalised_clique_graph_convolution():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    h = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    a = (labels[:, None] == labels[None, :]).float()  # cliques with self-loops: A + I
    d = a.sum(1).rsqrt()
    explicit = d[:, None] * a * d[None, :] @ h
    assert torch.allclose(propagate(h, labels), explicit, atol=1e-6)


def test_the_embedding_ignores_point_order_label_names_and_dataset_size():
    torch.manual_seed(0)
    gae = GraphAutoencoder(input_dim=4, hidden=8, embed=5)
    x = torch.randn(30, 4)
    labels = torch.randint(0, 4, (30,))
    e = clustering_embedding(gae, x, labels)
    assert e.shape == (15,)  # 5 * 6 / 2
    order = torch.randperm(30)
    assert torch.allclose(clustering_embedding(gae, x[order], labels[order]), e, atol=1e-5)
    renamed = torch.tensor([3, 0, 2, 1])[labels]
    assert torch.allclose(clustering_embedding(gae, x, renamed), e, atol=1e-5)
    doubled = clustering_embedding(gae, torch.cat([x, x]), torch.cat([labels, labels]))
    assert torch.allclose(doubled, e, atol=1e-5)
    other = clustering_embedding(gae, x, (labels + (torch.arange(30) % 2)) % 4)
    assert not torch.allclose(other, e, atol=1e-3)
    batch = clustering_embedding(gae, x, torch.stack([labels, renamed]), n_clusters=4)  # a population at once
    assert torch.allclose(batch[0], e, atol=1e-5) and torch.allclose(batch[1], e, atol=1e-5)


@pytest.mark.parametrize("graph", ["cliques+self", "cliques+knn"])
def test_the_richer_graphs_keep_the_invariances(graph):
    torch.manual_seed(0)
    gae = GraphAutoencoder(input_dim=2, hidden=8, embed=5, graph=graph)
    x = torch.randn(40, 2)
    labels = torch.randint(0, 3, (40,))
    e = clustering_embedding(gae, x, labels, neighbours=nearest_neighbours(x, 5))
    order = torch.randperm(40)
    moved = clustering_embedding(gae, x[order], labels[order], neighbours=nearest_neighbours(x[order], 5))
    assert torch.allclose(moved, e, atol=1e-5)
    renamed = clustering_embedding(gae, x, torch.tensor([2, 0, 1])[labels], neighbours=nearest_neighbours(x, 5))
    assert torch.allclose(renamed, e, atol=1e-5)


def test_only_the_richer_graphs_tell_rings_from_a_cross():
    # Eight points on two rings; "rings" (inner / outer) and "cross" (horizontal / vertical)
    # both make two clusters of four points centred on the origin. The paper's clique graph
    # sees only cluster means and sizes, so it cannot tell them apart.
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [2, 0], [-2, 0], [0, 2], [0, -2]])
    rings = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cross = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    neighbours = nearest_neighbours(x, 2)
    assert neighbours.shape == (8, 2) and not (neighbours == torch.arange(8)[:, None]).any()
    for graph, same in [("cliques", True), ("cliques+self", False), ("cliques+knn", False)]:
        torch.manual_seed(0)
        gae = GraphAutoencoder(2, 16, 8, graph=graph)
        a, b = (clustering_embedding(gae, x, y, neighbours=neighbours) for y in (rings, cross))
        assert torch.allclose(a, b, atol=1e-6) == same, graph
    with pytest.raises(DeepclustError, match="not one of"):
        GraphAutoencoder(2, graph="knn")
    with pytest.raises(DeepclustError, match="needs the points' nearest neighbours"):
        GraphAutoencoder(2, graph="cliques+knn")(x, rings)


def test_the_autoencoder_learns_to_reconstruct_cliques():
    torch.manual_seed(0)
    x_np, y_np = make_blobs(120, centers=3, cluster_std=0.5, random_state=0)
    x, y = standardize(x_np, 4), torch.as_tensor(y_np)
    gae = GraphAutoencoder(4, 32, 16)
    optimizer = torch.optim.Adam(gae.parameters(), lr=0.01)
    first = float(gae.reconstruction_loss(x, y).detach())
    for _ in range(100):
        optimizer.zero_grad()
        loss = gae.reconstruction_loss(x, y)
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first


def _blob_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = 2 + seed % 4
    x, y = make_blobs(100, centers=k, cluster_std=0.6, center_box=(-8, 8), random_state=seed)
    return standardize(x, 4), torch.as_tensor(y)


def test_a_wasserstein_critic_trained_on_true_and_random_clusterings_separates_them():
    torch.manual_seed(0)
    gae = GraphAutoencoder(4, 32, 16)
    critic = Critic(16 * 17 // 2)
    optimizer = torch.optim.RMSprop(critic.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(1)

    def pair(seed):
        x, y = _blob_set(seed)
        fake = torch.randint(0, int(y.max()) + 1, y.shape, generator=gen)
        with torch.no_grad():
            return clustering_embedding(gae, x, y), clustering_embedding(gae, x, fake)

    train = [pair(s) for s in range(20)]
    real, fake = torch.stack([r for r, _ in train]), torch.stack([f for _, f in train])
    for _ in range(300):
        optimizer.zero_grad()
        loss = wgan_critic_loss(critic(real), critic(fake))
        loss.backward()
        optimizer.step()
        clip_weights(critic, 0.05)
    test = [pair(s) for s in range(100, 120)]
    with torch.no_grad():
        wins = sum(float(critic(r)) > float(critic(f)) for r, f in test)
    assert wins >= 18  # held-out datasets: the true clustering scores above a random one


def test_cem_climbs_a_toy_score_and_finds_the_blobs():
    x_np, y_np = make_blobs(200, centers=4, cluster_std=0.4, center_box=(-6, 6), random_state=3)
    x = standardize(x_np, 2)

    def score(labels):  # agreement with the truth: a toy metric with a unique maximum
        return [adjusted_rand_score(y_np, row.numpy()) for row in labels]

    labels, curve = cem_search(score, x, max_clusters=8, population=100, iterations=20,
                               generator=torch.Generator().manual_seed(0))
    assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] > curve[0]
    assert curve[0] < 0.8 and adjusted_rand_score(y_np, labels.numpy()) > 0.95  # the first draws were not enough
    assert set(labels.tolist()) == set(range(len(set(labels.tolist()))))  # renumbered 0..k-1
    with pytest.raises(DeepclustError, match="population >= 2"):
        cem_search(score, x, 4, population=1)
    _, _, elite = cem_search(score, x, max_clusters=8, population=50, iterations=3, with_elite=True,
                             generator=torch.Generator().manual_seed(0))
    as_tuples = [tuple(c.tolist()) for c in elite]
    assert 1 <= len(elite) <= 5 and len(set(as_tuples)) == len(elite)  # the distinct clusterings of the elite
    assert all(c.tolist() == relabel(c).tolist() for c in elite)


def test_size_features_count_clusters_whatever_their_names_order_and_number_of_points():
    from deepclust.cluster.c2m import size_features

    labels = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3], [0, 1, 2, 3]])
    f = size_features(labels, max_clusters=4)
    assert torch.allclose(f[:, 0], torch.tensor([0.5, 0.25, 1.0]))
    assert torch.allclose(f[:, 1], torch.tensor([0.5, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(size_features(torch.tensor([1, 1, 0, 0, 1, 1, 0, 0]), 4), f[0])


def test_the_ranking_loss_compares_each_wrong_clustering_with_its_own_truth():
    from deepclust.losses import ranking_critic_loss

    critic = Critic(1, widths=())  # a linear score: c(e) = w e + b
    with torch.no_grad():
        critic.net[0].weight.fill_(1.0)
        critic.net[0].bias.zero_()
    # dataset A's truth scores 10 and its wrong clustering 9; dataset B's truth 0 and its wrong one -1:
    # the pooled Wasserstein loss sees wrong clusterings of A above the truth of B, the ranking loss does not
    real, fake = torch.tensor([[10.0], [0.0]]), torch.tensor([[9.0], [-1.0]])
    critic.requires_grad_(False)
    assert float(ranking_critic_loss(critic(real), critic(fake))) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-1.0))))
    swapped = ranking_critic_loss(critic(real.flip(0)), critic(fake))  # pairing matters
    assert float(swapped) > 4.0


def test_rotations_keep_distances_and_padding():
    from deepclust.cluster.c2m import rotate_points

    x = standardize(np.random.default_rng(0).normal(size=(30, 3)), 5)  # 3 real coordinates + 2 of padding
    turned = rotate_points(x, 3, torch.Generator().manual_seed(0))
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(turned, turned, compute_mode=exact), torch.cdist(x, x, compute_mode=exact), atol=1e-5)
    assert torch.all(turned[:, 3:] == 0) and not torch.allclose(turned, x)


def test_classic_candidates_hold_the_blobs_and_the_moons():
    from sklearn.datasets import make_moons

    from deepclust.cluster.c2m import classic_candidates

    for x_np, y_np, k in [make_blobs(150, centers=3, cluster_std=0.5, random_state=0) + (3,),
                          make_moons(150, noise=0.03, random_state=0) + (2,)]:
        candidates = classic_candidates(standardize(x_np, 2), max_clusters=5, random_state=0)
        assert candidates.shape[1] == 150 and len(candidates) <= 3 * 4  # k = 2..5, three algorithms, no repeats
        assert len({tuple(c.tolist()) for c in candidates}) == len(candidates)
        assert max(adjusted_rand_score(y_np, c.numpy()) for c in candidates) > 0.99  # single linkage follows the moons
        assert {len(c.unique()) for c in candidates} == {2, 3, 4, 5}


def test_relabel_keeps_the_clusters():
    labels = torch.tensor([5, 5, 2, 9, 2])
    assert relabel(labels).tolist() == [0, 0, 1, 2, 1]


def test_c2m_learns_from_labelled_datasets_and_clusters_a_new_one_with_its_own_k():
    from deepclust.methods import C2M

    train = [make_blobs(60, centers=k, random_state=k) for k in (2, 3, 4)]
    model = C2M(max_clusters=6, input_dim=2, gae_epochs=20, epochs=2, batch_size=2, population=10, iterations=3,
                random_state=0).fit(train)
    assert [h["epoch"] for h in model.history_] == [1, 2] and all(0 <= h["ari"] <= 1 for h in model.history_)
    X, y = make_blobs(80, centers=3, random_state=9)
    assert isinstance(model.score(X, y), float)
    assert model.score(X, y) == pytest.approx(model.score(X, (y + 1) % 3), abs=1e-5)  # label names do not matter
    labels = model.fit_predict(np.hstack([X, X]))  # another dimension: standardised to input_dim
    assert labels.shape == (80,) and 1 <= model.n_clusters_ <= 6 and set(labels) == set(range(model.n_clusters_))
    with pytest.raises(DeepclustError, match="more than max_clusters=2"):
        C2M(max_clusters=2).fit(train)
    # the richer graph with the embedding trained by the critic's loss: the autoencoder moves
    settings = dict(max_clusters=6, input_dim=2, gae_epochs=0, epochs=1, batch_size=3, population=10, iterations=2,
                    graph="cliques+knn", random_state=0)
    frozen = C2M(**settings).fit(train)  # gae_epochs=0: its autoencoder is the seeded initialisation
    joint = C2M(train_embedding=True, **settings).fit(train)
    ranked = C2M(objective="ranking", size_features=True, **settings).fit(train)
    assert ranked.critic_.net[0].in_features == 16 * 17 // 2 + 2 and len(ranked.history_) == 1
    searched = C2M(search="cem+candidates", rotate=True, **dict(settings, epochs=2)).fit(train)
    from deepclust.cluster.c2m import classic_candidates

    found = searched.fit_predict(X)  # the best clustering by the metric: none of the candidates scores higher
    candidates = classic_candidates(standardize(X, 2), 6, random_state=0)
    assert searched.score(X, found) >= max(searched.score(X, c.numpy()) for c in candidates) - 1e-5
    with pytest.raises(DeepclustError, match=r"is not 'cem' or 'cem\+candidates'"):
        C2M(search="grid", **settings).fit(train)
    with pytest.raises(DeepclustError, match="is not 'wgan' or 'ranking'"):
        C2M(objective="hinge", **settings).fit(train)
    pairs = list(zip(frozen.autoencoder_.parameters(), joint.autoencoder_.parameters()))
    assert len(pairs) == 6 and any(not torch.allclose(a, b) for a, b in pairs)
    assert joint.fit_predict(X).shape == (80,)
    with pytest.raises(DeepclustError, match="must be an .X, y. pair"):
        C2M().fit([np.zeros((5, 2))])
    with pytest.raises(DeepclustError, match="has not learned a metric yet"):
        C2M().fit_predict(X)


def test_near_misses_are_wrong_in_the_ways_they_say():
    from deepclust.cluster.c2m import near_misses

    x, y = (torch.as_tensor(a) for a in make_blobs(60, centers=3, random_state=0))
    x, y = standardize(x.numpy(), 2), y.long()
    one, rand, split, merged = near_misses(x, y, torch.Generator().manual_seed(0))
    assert one.unique().tolist() == [0] and rand.shape == y.shape
    assert len(split.unique()) == 4 and adjusted_rand_score(y, split) < 1
    assert all(len(split[y == c].unique()) <= 2 for c in range(3))  # one cluster cut in two, nothing else moved
    assert len(merged.unique()) == 2 and all(len(merged[y == c].unique()) == 1 for c in range(3))


def test_the_synthetic_families_have_the_promised_shapes_and_numbers_of_clusters():
    from deepclust.data.synthetic import synthetic_clusters, synthetic_collection

    blobs = synthetic_collection("blobs", 30, max_clusters=9, random_state=0)
    ks = [len(np.unique(y)) for _, y in blobs]
    assert all(X.shape == (200, 2) for X, _ in blobs) and min(ks) >= 2 and max(ks) <= 9 and len(set(ks)) >= 5
    for kind in ("moons", "circles"):
        X, y = synthetic_clusters(kind, 100, random_state=1)
        assert X.shape == (100, 2) and sorted(np.unique(y)) == [0, 1]
    a, b = synthetic_clusters("aniso", random_state=3), synthetic_clusters("aniso", random_state=3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # reproducible
    X, y = a  # sheared: the clusters are elongated (covariance far from isotropic)
    eig = np.linalg.eigvalsh(np.cov((X[y == 0] - X[y == 0].mean(0)).T))
    assert eig[1] / eig[0] > 3
    with pytest.raises(DeepclustError, match="not one of"):
        synthetic_clusters("spirals")


def test_separated_blobs_keep_their_centres_apart_and_the_nearest_true_centre_bounds_acc():
    from deepclust.data.synthetic import nearest_centre_accuracy, synthetic_clusters, synthetic_collection

    X, y, centres = synthetic_clusters("blobs", random_state=3, return_centers=True)
    plain = synthetic_clusters("blobs", random_state=3)  # asking for the centres changes no data
    assert np.array_equal(X, plain[0]) and np.array_equal(y, plain[1]) and len(centres) == len(np.unique(y))
    anywhere = synthetic_collection("blobs", 40, random_state=0, return_centers=True)
    apart = synthetic_collection("blobs", 40, random_state=0, min_separation=4, return_centers=True)

    def closest(c):
        d = np.linalg.norm(c[:, None] - c[None], axis=-1)
        return d[np.triu_indices(len(c), 1)].min()

    # stds are 0.5 to 1: 4 stds apart is at least 2 units, whatever the std
    assert min(closest(c) for _, _, c in apart) >= 2 and min(closest(c) for _, _, c in anywhere) < 2
    best = [np.mean([nearest_centre_accuracy(X, y, c, "blobs") for X, y, c in sets]) for sets in (anywhere, apart)]
    assert best[0] < 0.98 < best[1]  # coinciding centres cap any clustering's ACC
    X, y, centres = synthetic_clusters("aniso", random_state=5, min_separation=4, return_centers=True)
    assert nearest_centre_accuracy(X, y, centres, "aniso") > 0.95  # judged before the shear
    assert synthetic_clusters("moons", random_state=1, return_centers=True)[2] is None
    with pytest.raises(DeepclustError, match="min_separation"):
        synthetic_clusters("blobs", min_separation=10)


def test_uneven_blobs_keep_a_minimum_size_and_even_ones_are_unchanged():
    from deepclust.data.synthetic import MIN_CLUSTER_SIZE, synthetic_clusters, synthetic_collection

    for separation in (0, 4):
        even = synthetic_collection("blobs", 10, random_state=0, min_separation=separation)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(even, synthetic_collection(
            "blobs", 10, random_state=0, min_separation=separation, size_alpha=None)))
        uneven = synthetic_collection("aniso", 30, random_state=0, min_separation=separation, size_alpha=1.0)
        sizes = [np.bincount(y) for _, y in uneven]
        assert all(X.shape == (200, 2) and s.sum() == 200 and s.min() >= MIN_CLUSTER_SIZE for (X, _), s in
                   zip(uneven, sizes))
        assert np.median([s.max() / s.min() for s in sizes]) > 3  # one size for all is gone
        assert max(len(s) for s in sizes) == 9 and min(len(s) for s in sizes) == 2
    X, y, centres = synthetic_clusters("blobs", random_state=2, min_separation=4, size_alpha=0.5, return_centers=True)
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(len(centres), 1)]
    assert len(centres) == len(np.unique(y)) and gaps.min() >= 2  # still 4 stds (>= 0.5) apart
    with pytest.raises(DeepclustError, match="size_alpha=0 must be a number > 0"):
        synthetic_clusters("blobs", size_alpha=0)
    with pytest.raises(DeepclustError, match="n_samples >= 5"):
        synthetic_clusters("blobs", n_samples=30, size_alpha=1.0)


def test_critic_checks_mislabel_the_asked_fraction_and_rank_the_truth():
    from deepclust.methods import C2M
    from deepclust.cluster.c2m import mislabel, mislabel_scores, truth_rank

    X, y = make_blobs(60, centers=3, random_state=0)
    moved = mislabel(y, 0.25, np.random.default_rng(0))
    assert (moved != y).sum() == 15 and set(moved) == set(y)
    model = C2M(max_clusters=4, input_dim=2, gae_epochs=5, epochs=1, batch_size=2, population=10, iterations=2,
                random_state=0).fit([make_blobs(60, centers=k, random_state=k) for k in (2, 3)])
    scores = mislabel_scores(model, X, y, fractions=(0.0, 0.5), copies=3, random_state=0)
    assert scores.shape == (2, 3) and np.allclose(scores[0], model.score(X, y))  # nothing mislabelled: the truth
    renamed = (y + 1) % 3
    assert truth_rank(model, X, y, [renamed]) == 1  # a renaming is the truth, not a rival
    rivals = [np.zeros_like(y), moved]
    better = sum(model.score(X, c) > model.score(X, y) for c in rivals)
    assert truth_rank(model, X, y, rivals) == 1 + better
    with pytest.raises(DeepclustError, match="at least two clusters"):
        mislabel(np.zeros(5, dtype=int), 0.5, np.random.default_rng(0))


def test_a_saved_metric_scores_and_clusters_as_before(tmp_path):
    from deepclust.methods import C2M

    train = [make_blobs(60, centers=k, random_state=k) for k in (2, 3)]
    model = C2M(max_clusters=4, input_dim=2, gae_epochs=5, epochs=1, batch_size=2, population=10, iterations=2,
                graph="cliques+knn", size_features=True, random_state=0).fit(train)
    path = tmp_path / "metric.pt"
    model.save(path)
    back = C2M.load(path, random_state=5)
    X, y = make_blobs(50, centers=3, random_state=4)
    assert back.score(X, y) == pytest.approx(model.score(X, y), abs=1e-6)
    assert back.graph == "cliques+knn" and back.history_ == model.history_
    assert np.array_equal(back.fit_predict(X), C2M.load(path, random_state=5).fit_predict(X))  # seeded search
    with pytest.raises(DeepclustError, match="no C2M metric at"):
        C2M.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DeepclustError, match="C2M metric .* is not a PyTorch file"):
        C2M.load(tmp_path / "junk.pt")
    # search settings may change after training, nothing else
    searched = C2M.load(path, random_state=5, whiten=True, population=12)
    assert searched.whiten and searched.population == 12 and searched.score(X, y) == pytest.approx(back.score(X, y))
    labels = searched.fit_predict(X)
    assert isinstance(searched.whitened_, bool) and len(labels) == len(X)
    with pytest.raises(DeepclustError, match="n_neighbours cannot change after training"):
        C2M.load(path, n_neighbours=5)


def test_pooled_whitening_makes_sheared_clusters_round_and_keeps_the_padding():
    from deepclust.cluster.c2m import pooled_whitening

    X, y = make_blobs(600, centers=4, cluster_std=1.0, random_state=3)
    shear = np.array([[0.6, -0.64], [-0.41, 0.86]])  # scikit-learn's anisotropic blobs
    x = standardize(X @ shear, 4)  # two real coordinates, two of padding
    labels = torch.as_tensor(y)

    def within(z):
        z = z[:, :2].double().numpy()
        centred = np.concatenate([z[y == c] - z[y == c].mean(0) for c in range(4)])
        return np.linalg.cond(centred.T @ centred)

    white = pooled_whitening(x, labels)
    assert within(x) > 5 and within(white) == pytest.approx(1.0, abs=1e-4)
    assert torch.all(white[:, 2:] == 0)
    assert float(white.pow(2).sum(1).mean()) == pytest.approx(1.0, abs=1e-4)  # standardised again
    # round clusters stay almost as they are (their sample covariances are nearly round)
    round_x = standardize(X, 2)
    assert float(torch.linalg.norm(pooled_whitening(round_x, labels) - round_x) / torch.linalg.norm(round_x)) < 0.1
    assert float(torch.linalg.norm(white - x) / torch.linalg.norm(x)) > 0.3  # the sheared ones do not


def test_neighbour_components_match_scipy_and_structure_features_see_cuts_and_merges():
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    from deepclust.data.synthetic import synthetic_clusters
    from deepclust.cluster.c2m import neighbour_components, structure_features

    X, y = synthetic_clusters("moons", random_state=3)
    x = standardize(X, 2)
    nb = nearest_neighbours(x, 10)
    y = torch.as_tensor(y)
    g = torch.Generator().manual_seed(0)
    straight = (x[:, 0] > 0).long()  # a straight cut: compact halves that cut both moons
    labels = torch.stack([y, straight, torch.randint(0, 4, (200,), generator=g), torch.zeros_like(y)])
    rows, cols = np.repeat(np.arange(200), 10), nb.reshape(-1).numpy()
    for lab, comp in zip(labels, neighbour_components(labels, nb)):  # batched, as the search scores a population
        keep = (lab[rows] == lab[cols]).numpy()
        graph = csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(200, 200))
        count, reference = connected_components(graph, directed=False)
        assert len(set(comp.tolist())) == count and adjusted_rand_score(reference, comp.numpy()) == 1.0
    cut, outside, small = structure_features(labels, nb).T
    assert cut[0] < 0.01 and outside[0] == 0 and small[0] == 0  # the moons are the dense, separate pieces
    assert cut[1] > 5 * cut[0] + 0.02 and cut[2] > 0.5 and outside[2] > 0.5
    order = torch.randperm(200, generator=g)  # the same clustering, points in another order
    assert torch.allclose(structure_features(y[order], nearest_neighbours(x[order], 10)), structure_features(y, nb))
    blobs = torch.as_tensor(make_blobs(90, centers=[[-9, 0], [0, 0], [9, 0]], random_state=0)[0], dtype=torch.float32)
    truth = torch.as_tensor(make_blobs(90, centers=[[-9, 0], [0, 0], [9, 0]], random_state=0)[1])
    merged = truth.masked_fill(truth == 2, 0)  # two far blobs in one cluster: one of them is outside
    feats = structure_features(torch.stack([truth, merged]), nearest_neighbours(blobs, 5))
    assert feats[0].tolist() == [0.0, 0.0, 0.0] and feats[1, 0] == 0 and abs(float(feats[1, 1]) - 1 / 3) < 0.05
    stray = truth.clone()
    stray[:3] = 3  # three points split off as a fourth cluster, smaller than a neighbourhood
    assert float(structure_features(stray, nearest_neighbours(blobs, 5))[2]) == pytest.approx(1 / 4)


def test_mutual_neighbour_pieces_leave_a_point_whose_neighbours_ignore_it_outside():
    from deepclust.cluster.c2m import mutual_neighbours, neighbour_components, structure_features

    group = torch.randn(20, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    x = torch.cat([group, torch.tensor([[5.0, 0.0]])])  # a straggler: its neighbours are in the group, not it in theirs
    nb = nearest_neighbours(x, 5)
    mutual = mutual_neighbours(nb)
    assert not mutual[20].any() and mutual[:20].any(1).all()
    one = torch.zeros(21, dtype=torch.long)
    pieces = neighbour_components(one, nb, mutual)
    assert int(pieces[20]) == 20 and int((pieces == 20).sum()) == 1  # the straggler is a piece of its own
    assert int(neighbour_components(one, nb)[20]) == 0  # one-way links join it to the group
    assert float(structure_features(one, nb)[1]) == 0.0
    assert float(structure_features(one, nb, mutual=True)[1]) > 0


def test_cores_see_two_blobs_merged_through_a_sparse_bridge_but_not_a_ring():
    from sklearn.datasets import make_circles

    from deepclust.cluster.c2m import neighbour_reach, structure_features

    blobs, labels = make_blobs(80, centers=[[-2, 0], [2, 0]], cluster_std=0.3, random_state=0)
    bridge = np.c_[np.linspace(-1.25, 1.25, 11), np.zeros(11)]  # sparse points, each a mutual neighbour of the next
    X, y = np.r_[blobs, bridge], torch.as_tensor(np.r_[labels, (bridge[:, 0] > 0).astype(int)])
    x = standardize(X, 2)
    nb = nearest_neighbours(x, 10)
    truth, merged = structure_features(torch.stack([y, torch.zeros_like(y)]), nb, mutual=True,
                                       reach=neighbour_reach(x, nb))
    assert merged[:3].abs().max() == 0  # merged through the bridge: no cut, one piece, no small cluster
    assert truth[3] == 0 and merged[3] > 0.4  # but without the sparse bridge the two cores fall apart

    X, y = make_circles(200, noise=0.05, factor=0.5, random_state=0)  # the outer ring is sparser than the inner
    x = standardize(X, 2)
    nb = nearest_neighbours(x, 10)
    y = torch.as_tensor(y)
    truth, merged = structure_features(torch.stack([y, torch.zeros_like(y)]), nb, mutual=True,
                                       reach=neighbour_reach(x, nb))
    assert truth[3] == 0  # each ring's core is judged by its own density: it stays whole
    assert merged[3] > 0.05


def test_concentration_makes_the_cut_share_the_modularity_of_the_neighbour_graph():
    import networkx as nx

    from deepclust.cluster.c2m import structure_features

    angle = torch.arange(60) * (2 * np.pi / 60)  # evenly spaced on a circle: every point is 4 points' neighbour
    x = torch.stack([angle.cos(), angle.sin()], 1)
    nb = nearest_neighbours(x, 4)
    g = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.arange(60) // 20, torch.arange(60) // 30, torch.randint(0, 5, (60,), generator=g),
                          torch.zeros(60, dtype=torch.long)])
    feats = structure_features(labels, nb, concentration=True)
    assert feats.shape == (4, 4) and torch.equal(feats[:, :3], structure_features(labels, nb))
    graph = nx.DiGraph([(i, int(j)) for i in range(60) for j in nb[i]])
    for lab, (cut, _, _, concentration) in zip(labels, feats):
        shares = torch.bincount(lab).double() / 60
        assert float(concentration) == pytest.approx(float(shares.pow(2).sum()))
        clusters = [set(torch.nonzero(lab == c).flatten().tolist()) for c in lab.unique()]
        assert 1 - float(cut) - float(concentration) == pytest.approx(nx.community.modularity(graph, clusters), abs=1e-6)
    arcs, halves, noise, one = (1 - feats[:, 0] - feats[:, 3]).tolist()
    assert arcs > halves > one == 0 > noise  # three arcs beat two, any arcs beat one cluster or a random labelling
    names = torch.tensor([3, 0, 4, 1, 2])  # renaming clusters changes nothing
    assert torch.equal(structure_features(names[labels[2]], nb, concentration=True), feats[2])


def test_balance_is_how_unequal_the_cluster_sizes_are_and_sees_touching_blobs_merged():
    from deepclust.cluster.c2m import structure_features

    angle = torch.arange(60) * (2 * np.pi / 60)
    x = torch.stack([angle.cos(), angle.sin()], 1)
    nb = nearest_neighbours(x, 4)
    halves, quarters = torch.arange(60) // 30, torch.arange(60) // 15
    uneven = torch.cat([torch.zeros(30), torch.ones(15), torch.full((15,), 2)]).long()  # shares 1/2, 1/4, 1/4
    labels = torch.stack([halves, quarters, uneven, torch.zeros(60, dtype=torch.long)])
    feats = structure_features(labels, nb, balance=True)
    assert feats.shape == (4, 4) and torch.equal(feats[:, :3], structure_features(labels, nb))
    entropy = 0.5 * np.log(2) + 2 * 0.25 * np.log(4)
    assert feats[:, 3].tolist() == pytest.approx([0, 0, 1 - entropy / np.log(3), 0], abs=1e-6)
    assert feats[1, 0] > feats[0, 0]  # equal arcs keep the balance but cut more pairs
    names = torch.tensor([2, 0, 1])
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    assert torch.equal(structure_features(names[uneven], nb, balance=True), feats[2])
    assert float(structure_features(uneven[order], nearest_neighbours(x[order], 4), balance=True)[3]) == \
        pytest.approx(float(feats[2, 3]))
    # two touching blobs of five merged: fewer pairs cut, no more points apart, but one cluster twice the others
    X, y = make_blobs(200, centers=[[0, 0], [3.2, 0], [10, 0], [0, 10], [10, 10]], cluster_std=1.0, random_state=0)
    x = standardize(X, 2)
    nb = nearest_neighbours(x, 10)
    truth = torch.as_tensor(y)
    merged = truth.masked_fill(truth == 1, 0)
    (cut_t, out_t, _, bal_t), (cut_m, out_m, _, bal_m) = structure_features(
        torch.stack([truth, merged]), nb, mutual=True, balance=True).tolist()
    assert cut_m < cut_t and out_m <= out_t  # the merge looks better to the neighbour structure
    assert bal_t == 0 and bal_m > 0.03


def test_a_feature_only_metric_and_the_smallest_number_of_clusters():
    from deepclust.methods import C2M

    train = [make_blobs(60, centers=k, random_state=k) for k in (2, 3, 4)]
    settings = dict(max_clusters=6, input_dim=2, epochs=1, batch_size=3, population=10, iterations=2, random_state=0)
    model = C2M(gae=False, size_features=True, structure_features=True, objective="ranking", **settings).fit(train)
    assert model.critic_.net[0].in_features == 5  # 2 size + 3 structure features
    shaped = C2M(gae=False, size_features=True, structure_features=True, monotone=True, objective="ranking",
                 **settings).fit(train)
    assert shaped.critic_.net[0].in_features == 2 and shaped.critic_.penalty.shape == (3,)
    base = torch.tensor([0.3, 0.5, 0.02, 0.0, 0.0])
    for j in (2, 3, 4):  # more cut pairs, stray points or small clusters never score higher
        worse = base.clone()
        worse[j] += 0.2
        with torch.no_grad():
            assert float(shaped.critic_(worse)) < float(shaped.critic_(base))
    X, _ = make_blobs(80, centers=3, random_state=9)
    assert model.fit_predict(X).shape == (80,) and model.n_clusters_ >= 2  # min_clusters=2: never one cluster
    assert C2M(gae=False, structure_features=True, min_clusters=3, **settings).fit(train).fit_predict(X).max() >= 2
    with pytest.raises(DeepclustError, match="nothing to see"):
        C2M(gae=False, **settings).fit(train)
    with pytest.raises(DeepclustError, match="min_clusters=7 must be between"):
        C2M(min_clusters=7, **settings).fit(train)


def test_the_learned_metric_as_a_clusterer_and_as_a_k_estimator(tmp_path):
    from deepclust.cluster import create_clusterer, estimate_n_clusters
    from deepclust.methods import C2M

    train = [make_blobs(60, centers=k, random_state=k) for k in (2, 3, 4)]
    model = C2M(max_clusters=6, input_dim=2, gae_epochs=10, epochs=1, batch_size=3, population=10, iterations=2,
                size_features=True, objective="ranking", random_state=0).fit(train)
    model.save(tmp_path / "metric.pt")
    X, y = make_blobs(70, centers=3, random_state=5)
    clusterer = create_clusterer("c2m", metric=str(tmp_path / "metric.pt"), random_state=1).fit(X)
    assert clusterer.labels_.shape == (70,) and 2 <= clusterer.n_clusters_ <= 6
    assert clusterer.score_ == pytest.approx(model.score(X, clusterer.labels_), abs=1e-5)
    again = create_clusterer("c2m", metric=C2M.load(tmp_path / "metric.pt"), random_state=1).fit(X)
    assert np.array_equal(again.labels_, clusterer.labels_)  # a path or the model: the same seeded search
    estimate = estimate_n_clusters(X, method="c2m", k_max=6, metric=model, random_state=0)
    assert [p["k"] for p in estimate.curve()] == [2, 3, 4, 5, 6]
    assert estimate.n_clusters == estimate.ks[int(np.argmax(estimate.scores))]
    assert np.allclose(estimate_n_clusters(X, method="c2m", k_max=6, metric=model, random_state=0).scores,
                       estimate.scores)
    with pytest.raises(DeepclustError, match="no C2M metric at"):
        create_clusterer("c2m", metric=str(tmp_path / "none.pt")).fit(X)
    with pytest.raises(DeepclustError, match="needs a learned metric"):
        create_clusterer("c2m").fit(X)
    with pytest.raises(DeepclustError, match="needs a learned metric"):
        estimate_n_clusters(X, method="c2m", k_max=4)


def test_sample_datasets_draws_class_subsets_of_the_asked_size():
    from deepclust.methods.c2m_training import sample_datasets

    y = np.repeat([f"c{i}" for i in range(12)], 30)
    subsets = sample_datasets(y, count=40, size=50, max_classes=5, random_state=0)
    counts = [len(np.unique(y[s])) for s in subsets]
    assert len(subsets) == 40 and all(len(s) == 50 and len(set(s)) == 50 for s in subsets)
    assert min(counts) == 2 and max(counts) == 5  # 2 to max_classes classes, each size possible
    small = sample_datasets(y, count=3, size=500, max_classes=2, random_state=0)
    assert all(len(s) == 60 for s in small)  # fewer points than asked: all of the two classes
    assert all(np.array_equal(a, b) for a, b in zip(subsets, sample_datasets(y, 40, 50, 5, random_state=0)))
    with pytest.raises(DeepclustError, match="at least 2 classes"):
        sample_datasets(np.zeros(10), 3, 5, 4)


def test_the_images_preset_finds_k_where_every_clustering_cuts_many_neighbour_pairs():
    """Touching 16-d blobs (the true clusters cut 4 to 26% of the 10-neighbour pairs, as
    image classes do): a metric of the neighbour structure alone only gains by merging and
    answers about 2 clusters; balance (in the transferable preset) undoes some merges; with
    concentration the critic weighs the cut against the cluster sizes and finds k."""
    from deepclust.methods import C2M
    from deepclust.cluster.c2m import PRESETS, structure_features

    def sets(seed, count):
        rng = np.random.default_rng(seed)
        return [make_blobs(160, n_features=16, centers=int(rng.integers(3, 9)), cluster_std=2.0, center_box=(-4, 4),
                           random_state=int(rng.integers(10**9))) for _ in range(count)]

    train, test = sets(0, 4), sets(1, 6)
    cuts = [float(structure_features(torch.as_tensor(y), nearest_neighbours(standardize(X, 16), 10))[0]) for X, y in test]
    assert max(cuts) > 0.03
    found = {}
    for name, preset in (("structure", {**PRESETS["transferable"], "balance": False}),
                         ("transferable", PRESETS["transferable"]), ("images", PRESETS["images"])):
        metric = C2M(max_clusters=10, input_dim=16, population=20, iterations=5, epochs=1, random_state=0,
                     **{**preset, "whiten": False}).fit(train)
        found[name] = [(len(np.unique(y)), int(len(np.unique(metric.fit_predict(X)))),
                        adjusted_rand_score(y, metric.labels_)) for X, y in test]
    ari = {name: np.mean([a for _, _, a in rows]) for name, rows in found.items()}
    assert np.mean([k_found for _, k_found, _ in found["structure"]]) < 3
    assert sum(k == k_found for k, k_found, _ in found["images"]) >= 4
    assert ari["images"] > 0.8 > ari["transferable"] > ari["structure"] + 0.1

"""Critic2Metric: the learned clustering metric, its presets, training and search."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from deepclust.checkpoint import load_checkpoint, save_checkpoint
from deepclust.cluster.c2m.critic import Critic, clip_weights
from deepclust.cluster.c2m.features import neighbour_reach, size_features, structure_features
from deepclust.cluster.c2m.graph import (
    GraphAutoencoder,
    clustering_embedding,
    label_tensor,
    nearest_neighbours,
    one_hot,
    standardize,
)
from deepclust.cluster.c2m.search import (
    SEARCH_SETTINGS,
    cem_search,
    classic_candidates,
    near_misses,
    pooled_whitening,
    relabel,
    rotate_points,
)
from deepclust.errors import DeepclustError
from deepclust.losses import ranking_critic_loss, wgan_critic_loss

#: Named settings of :class:`C2M`. ``paper``: Algorithm 2 as published (the constructor's
#: defaults). ``transferable``: what carries a metric learned on blobs over to other shapes
#: and collections: the critic scores
#: the clustering's neighbour-graph structure (mutual-neighbour pieces, the pieces of each
#: cluster's dense core) and how unequal its cluster sizes are (``balance``), may only lower
#: its score as they worsen, and learns with the per-dataset ranking loss; the search also
#: weighs k-means, Ward and single linkage for every k, then searches again in the space the
#: first answer's pooled within-cluster covariance whitens (``whiten``). ``images`` (the
#: default of ``deepclust train --method c2m``): ``transferable`` plus ``concentration``, so
#: the critic weighs the neighbour pairs a clustering cuts against what any clustering of
#: those sizes cuts, and without ``balance``. Why each setting is there, with the figures, is
#: in docs/methods.md (the C2M section's three settings).
_TRANSFERABLE = {"gae": False, "structure_features": True, "monotone": True, "mutual": True, "cores": 1.2,
                 "balance": True, "whiten": True, "objective": "ranking", "search": "cem+candidates",
                 "critic_lr": 0.005, "clip": 100.0}
PRESETS = {
    "paper": {},
    "transferable": _TRANSFERABLE,
    "images": {**_TRANSFERABLE, "concentration": True, "balance": False},
}


class C2M:
    """Critic2Metric (Algorithm 2): learn a clustering metric from labelled datasets, then
    cluster new datasets by maximising it with the Cross-Entropy Method.

    Parameters
    ----------
    max_clusters : int
        Outputs of the clustering network: the most clusters a solution may use (the
        number used is the estimate of k).
    input_dim : int
        Every dataset is standardised to this many coordinates (:func:`standardize`), so
        one metric serves datasets of any dimension.
    gae_hidden, gae_embed : int
        Widths of the graph autoencoder (the paper: 32 and 16 for 2-D data, 100 and 50 for
        images).
    gae_epochs : int
        Adam steps of the autoencoder's reconstruction training on the true clusterings
        (then frozen: the metric's embedding g).
    epochs : int
        Passes over the labelled datasets (the paper: 10; 1 for few-shot training).
    batch_size : int
        Datasets per critic update.
    critic_lr, critic_decay : float
        RMSprop learning rate and decay (smoothing) rate (the paper: 0.01 and 0.95).
    clip : float
        WGAN weight clipping of the critic.
    population, elite, iterations, extra_std, init_std
        The Cross-Entropy Method (:func:`cem_search`).
    graph : {"cliques", "cliques+self", "cliques+knn"}
        What the autoencoder's layers see (:class:`GraphAutoencoder`): the paper's clique
        graph alone, plus each point's own features, plus its ``n_neighbours`` nearest
        neighbours in the data.
    n_neighbours : int
    critic_steps, critic_batch : int
        Critic updates after each batch of searches, and wrong clusterings per update.
    replay : int
        The most recent wrong clusterings kept as the critic's negatives (as labels, embedded
        afresh at each update). Each search adds its last elite.
    objective : {"wgan", "ranking"}
        The critic's loss: the paper's Wasserstein loss (eq. 6) between all true and all
        wrong clusterings, or :func:`ranking_critic_loss` (each wrong clustering against the
        truth of its own dataset).
    size_features : bool
        Append :func:`size_features` (number of clusters, entropy of their sizes) to the
        embedding: ``Z^T Z / n`` of the clique graph is a size-weighted sum over clusters and
        does not see how many there are.
    search : {"cem", "cem+candidates"}
        The paper's Cross-Entropy Method alone, or also the :func:`classic_candidates`
        (k-means, Ward, single linkage for every k), keeping whichever the metric scores
        highest; in training, the wrong candidates are negatives too.
    structure_features : bool
        Append :func:`structure_features` (the share of nearest-neighbour pairs cut, the share
        of points outside their cluster's largest connected piece), computed on the data's
        ``n_neighbours`` graph: what a blob-trained metric needs to judge moons and rings.
    gae : bool
        Give the critic the graph autoencoder's embedding (the paper). With ``False`` it
        sees only the size and structure features: a learned combination of
        scale-free statistics of a clustering, which carries over to unseen shapes.
    monotone : bool
        With ``structure_features``: the critic can only lower its score as they grow
        (:class:`Critic` ``penalised``); the other inputs go through the MLP.
    mutual : bool
        The structure features' connected pieces follow mutual neighbour pairs only, so two
        touching blobs joined by a few one-way neighbour links count as two pieces.
    cores : float
        With ``structure_features`` and ``cores > 0``: a fourth, the share of each cluster's
        core (its points whose neighbour reach is at most ``cores`` times the cluster's mean)
        outside the largest piece of that core (:func:`structure_features`): it sees two
        blobs merged through a few sparse points. 0 leaves it out.
    concentration : bool
        With ``structure_features``: one more, the sum of the squared cluster shares (the
        null model of modularity on the neighbour graph, :func:`structure_features`). With
        it the critic can weigh the pairs a clustering cuts against the pairs any clustering
        of those sizes would cut: on image embeddings, where every clustering cuts many, the
        cut share alone prefers two clusters.
    balance : bool
        With ``structure_features``: one more, how unequal the cluster sizes are
        (``1 - entropy / log k``, :func:`structure_features`). A merge of two touching
        blobs cuts fewer neighbour pairs than the truth but leaves one cluster twice the
        size of the others; labelled sets of even classes teach the critic to weigh that.
    critic_widths : tuple of int
        Hidden layers of the critic's MLP (the paper: 256, 256, 512, 512); ``()`` makes it
        linear in its inputs.
    min_clusters : int
        The search's answers use at least this many clusters (the paper's datasets have
        2 or more; one cluster is no clustering).
    rotate : bool
        From the second epoch on, show every labelled set under a new random rotation
        (:func:`rotate_points`): more views of few labelled sets, against over-fitting them.
    baseline_negatives : bool
        Besides the searched clustering, show the critic the :func:`near_misses` of every
        training dataset as negatives (not in the paper; without them the search exploits
        what the critic never saw, e.g. one cluster, and does not learn k).
    whiten : bool
        :meth:`fit_predict` searches a second time in the space whitened by the pooled
        within-cluster covariance of its first answer (:func:`pooled_whitening`), and keeps
        the answer the metric scores higher in the space it was found in. A linear
        stretch shared by every cluster (anisotropic blobs) is undone; the training is
        unchanged. A search-time setting: :meth:`load` can change it.
    random_state : int or None
    verbose : bool

    Attributes
    ----------
    autoencoder_ : GraphAutoencoder
    critic_ : Critic
    history_ : list of dict
        Per epoch: mean critic score of the true and of the searched clusterings, the mean
        ARI of the searched clusterings to the truth, seconds.
    labels_ : LongTensor
        After :meth:`fit_predict`: the clustering found.
    n_clusters_ : int
        Clusters used by that clustering (the estimate of k).
    whitened_ : bool
        With ``whiten``: whether the answer came from the whitened search.
    """

    def __init__(self, max_clusters: int = 50, input_dim: int = 16, gae_hidden: int = 32, gae_embed: int = 16,
                 gae_epochs: int = 200, epochs: int = 10, batch_size: int = 4, critic_lr: float = 0.01,
                 critic_decay: float = 0.95, clip: float = 0.01, population: int = 100, elite: float = 0.1,
                 iterations: int = 30, extra_std: float = 0.1, init_std: float = 1.0, baseline_negatives: bool = True,
                 graph: str = "cliques", n_neighbours: int = 10, critic_steps: int = 5, critic_batch: int = 64,
                 replay: int = 5000, train_embedding: bool = False, objective: str = "wgan",
                 size_features: bool = False, structure_features: bool = False, gae: bool = True,
                 monotone: bool = False, mutual: bool = False, cores: float = 0.0, concentration: bool = False,
                 balance: bool = False, critic_widths=(256, 256, 512, 512),
                 min_clusters: int = 2, search: str = "cem",
                 rotate: bool = False, whiten: bool = False, random_state=None, verbose: bool = False):
        self.whiten = whiten
        self.critic_steps = critic_steps
        self.critic_batch = critic_batch
        self.replay = replay
        self.train_embedding = train_embedding
        self.objective = objective
        self.size_features = size_features
        self.structure_features = structure_features
        self.gae = gae
        self.min_clusters = min_clusters
        self.monotone = monotone
        self.mutual = mutual
        self.cores = cores
        self.concentration = concentration
        self.balance = balance
        self.critic_widths = critic_widths
        self.search = search
        self.rotate = rotate
        self.max_clusters = max_clusters
        self.graph = graph
        self.n_neighbours = n_neighbours
        self.baseline_negatives = baseline_negatives
        self.input_dim = input_dim
        self.gae_hidden = gae_hidden
        self.gae_embed = gae_embed
        self.gae_epochs = gae_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.critic_lr = critic_lr
        self.critic_decay = critic_decay
        self.clip = clip
        self.population = population
        self.elite = elite
        self.iterations = iterations
        self.extra_std = extra_std
        self.init_std = init_std
        self.random_state = random_state
        self.verbose = verbose

    def _points(self, X, for_search: bool = True):
        """A dataset in the metric's input space: (x, its nearest neighbours when the graph or
        the structure features use them, the classic clusterings the search starts from when
        it uses them and ``for_search`` (scoring a given clustering does not need them), the
        neighbour reach of every point when the structure features use cores)."""
        return self._points_of(standardize(X, self.input_dim), for_search)

    def _points_of(self, x: torch.Tensor, for_search: bool = True):
        """:meth:`_points` of an already standardised ``x``."""
        wanted = self.graph == "cliques+knn" or self.structure_features
        neighbours = nearest_neighbours(x, self.n_neighbours) if wanted else None
        reach = neighbour_reach(x, neighbours) if self.structure_features and self.cores else None
        wanted = for_search and self.search != "cem"
        candidates = classic_candidates(x, self.max_clusters, self.random_state) if wanted else None
        return x, neighbours, candidates, reach

    def _networks(self) -> None:
        """Fresh ``autoencoder_`` and ``critic_`` shaped by the settings."""
        self.autoencoder_ = GraphAutoencoder(self.input_dim, self.gae_hidden, self.gae_embed, self.graph)
        extra = 2 * self.size_features + self._n_structure()
        self.critic_ = Critic(self.gae_embed * (self.gae_embed + 1) // 2 * self.gae + extra,
                              tuple(self.critic_widths), penalised=self._n_structure() if self.monotone else 0)

    def _n_structure(self) -> int:
        return (3 + (self.cores > 0) + bool(self.concentration) + bool(self.balance)) * self.structure_features

    def _embed(self, points, labels: torch.Tensor) -> torch.Tensor:
        """The critic's input for one or a batch (..., n) of clusterings of ``points``."""
        x, neighbours = points[0], points[1]
        k = max(int(labels.max()) + 1 if labels.numel() else 1, self.max_clusters)
        parts = [clustering_embedding(self.autoencoder_, x, labels, k, neighbours)] if self.gae else []
        if self.size_features:
            parts.append(size_features(labels, self.max_clusters))
        if self.structure_features:
            parts.append(structure_features(labels, neighbours, self.mutual, points[3], self.cores,
                                            self.concentration, self.balance))
        return torch.cat(parts, -1)

    def _embed_many(self, pairs, items) -> torch.Tensor:
        """Embeddings of ``(dataset index, labels)`` items, one batched call per dataset."""
        groups: dict[int, list[int]] = {}
        for i, (j, _) in enumerate(items):
            groups.setdefault(j, []).append(i)
        out = [None] * len(items)
        for j, where in groups.items():
            e = self._embed(pairs[j][0], torch.stack([items[i][1] for i in where]))
            for i, row in zip(where, e):
                out[i] = row
        return torch.stack(out)

    def _search(self, points, generator: torch.Generator, with_elite: bool = False):
        x = points[0]

        def score(labels):
            scores = self.critic_(self._embed(points, labels))
            if self.min_clusters > 1:  # too few clusters is no answer
                used = one_hot(labels, self.max_clusters).amax(-2).sum(-1)
                scores = scores.masked_fill(used < self.min_clusters, -float("inf"))
            return scores

        out = cem_search(score, x, self.max_clusters, self.population, self.elite, self.iterations, self.init_std,
                         self.extra_std, generator, with_elite=with_elite)
        candidates = points[2]
        if candidates is None:
            return out
        scores = score(candidates)
        best = int(scores.argmax())
        found, curve = out[0], out[1]
        if float(scores[best]) > curve[-1]:  # a classic clustering beats what the CEM found
            found, curve = relabel(candidates[best]), curve + [float(scores[best])]
        return (found, curve, list(out[2]) + list(candidates)) if with_elite else (found, curve)

    def check_params(self) -> None:
        """Refuse settings that cannot work, with what to change (before any training)."""
        if self.search not in ("cem", "cem+candidates"):
            raise DeepclustError(f"search={self.search!r} is not 'cem' or 'cem+candidates'")
        if self.objective not in ("wgan", "ranking"):
            raise DeepclustError(f"objective={self.objective!r} is not 'wgan' or 'ranking'")
        if not (self.gae or self.size_features or self.structure_features):
            raise DeepclustError("gae=False leaves the critic nothing to see; set size_features and/or "
                                 "structure_features too")
        if isinstance(self.cores, bool) or not isinstance(self.cores, (int, float)) or self.cores < 0:
            raise DeepclustError(f"cores={self.cores!r} must be a number >= 0 (the core's reach factor, e.g. 1.2; "
                                 "0 leaves the core feature out)")
        if isinstance(self.n_neighbours, bool) or not isinstance(self.n_neighbours, numbers.Integral) or self.n_neighbours < 1:
            raise DeepclustError(f"n_neighbours={self.n_neighbours!r} must be a whole number >= 1 (the neighbourhood "
                                 "the structure features and graphs use, e.g. 10)")
        if not 1 <= self.min_clusters <= self.max_clusters:
            raise DeepclustError(f"min_clusters={self.min_clusters} must be between 1 and max_clusters="
                                 f"{self.max_clusters}")

    def fit(self, datasets) -> "C2M":
        """Learn the metric from ``datasets``: a list of labelled ``(X, y)`` pairs (X of shape
        (n, d), any d; y the true clusters)."""
        import logging
        import time

        from sklearn.metrics import adjusted_rand_score

        log = logging.getLogger(__name__)
        self.check_params()
        pairs, dims = [], []
        for i, item in enumerate(datasets):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DeepclustError(f"datasets[{i}] must be an (X, y) pair")
            points = self._points(item[0])
            x, y = points[0], label_tensor(item[1])
            if len(y) != len(x):
                raise DeepclustError(f"datasets[{i}]: X has {len(x)} rows but y has {len(y)} labels")
            if int(y.max()) + 1 > self.max_clusters:
                raise DeepclustError(f"datasets[{i}] has {int(y.max()) + 1} clusters, more than max_clusters="
                                     f"{self.max_clusters}; raise max_clusters")
            pairs.append((points, y))
            dims.append(min(np.shape(item[0])[1], self.input_dim))
        if not pairs:
            raise DeepclustError("C2M needs at least one labelled (X, y) dataset to learn from")
        seed = int(np.random.default_rng(self.random_state).integers(2**31 - 1))
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        order_rng = np.random.default_rng(seed)
        self._networks()
        optimizer = torch.optim.Adam(self.autoencoder_.parameters(), lr=0.01)
        for _ in range(self.gae_epochs if self.gae else 0):  # the embedding g: reconstruct the true cliques
            optimizer.zero_grad()
            loss = torch.stack([self.autoencoder_.reconstruction_loss(p[0], y, p[1]) for p, y in pairs]).mean()
            loss.backward()
            optimizer.step()
        if not self.train_embedding:
            self.autoencoder_.requires_grad_(False)
        params = list(self.critic_.parameters()) + (list(self.autoencoder_.parameters()) if self.train_embedding else [])
        critic_opt = torch.optim.RMSprop(params, lr=self.critic_lr, alpha=self.critic_decay)
        replay = []  # (dataset index, wrong clustering) seen so far, the most recent last
        self.history_ = []
        originals = list(pairs)
        for epoch in range(self.epochs):
            t0 = time.perf_counter()
            if self.rotate and epoch > 0:  # new views of the same labelled sets
                pairs = [((rotate_points(p[0], d, generator),) + tuple(p[1:]), y)
                         for (p, y), d in zip(originals, dims)]
            real_scores, fake_scores, aris = [], [], []
            order = order_rng.permutation(len(pairs))
            for start in range(0, len(order), self.batch_size):
                batch = order[start: start + self.batch_size]
                for j in batch:
                    points, y = pairs[j]
                    with torch.no_grad():
                        found, _, elite = self._search(points, generator, with_elite=True)
                    wrong = [c for c in elite if adjusted_rand_score(y.numpy(), c.numpy()) < 1.0]
                    if self.baseline_negatives:  # clusterings the search may not propose yet
                        wrong += near_misses(points[0], y, generator)
                    replay += [(j, c) for c in wrong]
                    aris.append(adjusted_rand_score(y.numpy(), found.numpy()))
                replay = replay[-self.replay:]
                for _ in range(self.critic_steps):
                    pick = torch.randint(len(replay), (self.critic_batch,), generator=generator).tolist()
                    critic_opt.zero_grad()
                    wrong = [replay[i] for i in pick]
                    fake = self._embed_many(pairs, wrong)
                    if self.objective == "wgan":
                        real = self._embed_many(pairs, [(j, y) for j, (_, y) in enumerate(pairs)])
                        loss = wgan_critic_loss(self.critic_(real), self.critic_(fake))
                    else:  # each wrong clustering against the truth of its own dataset
                        real = self._embed_many(pairs, [(j, pairs[j][1]) for j, _ in wrong])
                        loss = ranking_critic_loss(self.critic_(real), self.critic_(fake))
                    loss.backward()
                    critic_opt.step()
                    clip_weights(self.critic_, self.clip)
                with torch.no_grad():
                    real_scores.append(float(self.critic_(self._embed_many(pairs, [(j, pairs[j][1]) for j in batch])).mean()))
                    fake_scores.append(float(self.critic_(self._embed_many(pairs, replay[-len(batch) * 4:])).mean()))
            row = {"epoch": epoch + 1, "real": float(np.mean(real_scores)), "fake": float(np.mean(fake_scores)),
                   "ari": float(np.mean(aris)), "seconds": time.perf_counter() - t0}
            self.history_.append(row)
            if self.verbose:
                log.info("C2M epoch %d/%d: critic true %.4f searched %.4f, ARI of searched %.3f (%.0f s)", epoch + 1,
                         self.epochs, row["real"], row["fake"], row["ari"], row["seconds"])
        self._generator = generator
        return self

    def save(self, path) -> None:
        """Write the learned metric (settings, autoencoder and critic weights, history) to
        ``path``, atomically; :meth:`load` reads it back to score or cluster new data."""

        self._fitted()
        import inspect

        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "verbose")]
        state = {"format": "deepclust-c2m/1", "settings": {name: getattr(self, name) for name in names},
                 "autoencoder": self.autoencoder_.state_dict(), "critic": self.critic_.state_dict(),
                 "history": self.history_}
        save_checkpoint(path, state)

    @classmethod
    def load(cls, path, random_state=None, **search) -> "C2M":
        """A metric written by :meth:`save`, ready for :meth:`score` and :meth:`fit_predict`
        (its searches seeded by ``random_state``, default the saved one). ``search``:
        settings of the search that may differ from the saved ones (``SEARCH_SETTINGS``)."""
        import os

        unknown = sorted(set(search) - set(SEARCH_SETTINGS))
        if unknown:
            raise DeepclustError(f"{', '.join(unknown)} cannot change after training; only the search settings "
                                 f"{', '.join(SEARCH_SETTINGS)} can")

        if not os.path.isfile(path):
            raise DeepclustError(f"no C2M metric at '{path}'; train one with C2M(...).fit(datasets).save(path)")

        state = load_checkpoint(path, "C2M metric", "train one with `deepclust train --method c2m`")
        if not isinstance(state, dict) or state.get("format") != "deepclust-c2m/1":
            raise DeepclustError(f"'{path}' is not a C2M metric written by C2M.save")
        model = cls(**{**state["settings"], **search})
        model._networks()
        model.autoencoder_.load_state_dict(state["autoencoder"])
        model.autoencoder_.requires_grad_(False)
        model.critic_.load_state_dict(state["critic"])
        model.critic_.requires_grad_(False)
        model.history_ = state["history"]
        model.seed_search(model.random_state if random_state is None else random_state)
        return model

    def seed_search(self, random_state) -> "C2M":
        """Seed the searches of :meth:`fit_predict` (the same seed, the same clustering)."""
        self._generator = torch.Generator().manual_seed(int(np.random.default_rng(random_state).integers(2**31 - 1)))
        return self

    def _fitted(self) -> None:
        if not hasattr(self, "critic_"):
            raise DeepclustError("this C2M has not learned a metric yet; call fit with labelled datasets first")

    def score(self, X, y) -> float:
        """The learned metric r(X, y): higher is a better clustering."""
        return self.score_many(X, [y])[0]

    def score_many(self, X, labelings) -> list[float]:
        """:meth:`score` of several clusterings of the same ``X``; its standardisation and
        nearest neighbours are computed once."""
        self._fitted()
        points = self._points(X, for_search=False)
        with torch.no_grad():
            return [float(self.critic_(self._embed(points, label_tensor(y)))) for y in labelings]

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Cluster a new dataset by maximising the learned metric; sets ``labels_`` and
        ``n_clusters_`` (the estimated number of clusters)."""
        self._fitted()
        self.whitened_ = False
        with torch.no_grad():
            points = self._points(X)
            labels, self.search_curve_ = self._search(points, self._generator)
            if self.whiten:
                white = self._points_of(pooled_whitening(points[0], labels))
                other, curve = self._search(white, self._generator)
                mine = self.critic_(self._embed(points, labels))
                if float(self.critic_(self._embed(white, other))) > float(mine):
                    labels, self.search_curve_, self.whitened_ = other, curve, True
        self.labels_ = labels.numpy().astype(np.int64)
        self.n_clusters_ = int(len(np.unique(self.labels_)))
        return self.labels_

"""Critic2Metric (C2M): a clustering-quality metric learned from labelled datasets.

Alami, Kaddah and Read, "Transferable Deep Metric Learning for Clustering" (IDA 2023).
A clustering ``y`` of a dataset ``X`` becomes a graph whose cliques are the clusters; a
graph autoencoder embeds its nodes, and the upper triangle of ``z^T z`` (scaled by the
number of points) is a fixed-size vector whatever the dataset's size. A Wasserstein
critic on that vector is the metric ``r(X, y)``; a new dataset is clustered by the
Cross-Entropy Method, searching the weights of a small network whose argmax over
``max_clusters`` outputs is the clustering that maximises ``r``.

This module holds the pieces as plain functions and small modules:

- :func:`standardize` puts any (n, d) array into the metric's input space (centred, unit
  total variance, PCA or zero-padding to ``input_dim``), so datasets of any dimension share
  one metric;
- :func:`propagate` is one graph-convolution step on the clique graph: with self-loops and
  symmetric normalisation, ``D^-1/2 (A + I) D^-1/2`` averages each point's cluster, so it
  is computed from cluster means without an n x n matrix;
- :class:`GraphAutoencoder` (two graph-convolution layers, inner-product decoder, Kipf and
  Welling 2016) and :func:`clustering_embedding` (the size-independent vector);
- :class:`Critic` (MLP 256-256-512-512-1, LeakyReLU 0.2);
- :func:`cem_search` (Algorithm 1) over a population of clustering networks at once.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepclust.checkpoint import load_checkpoint, save_checkpoint
from deepclust.cluster.neighbors import knn_graph
from deepclust.errors import DeepclustError
from deepclust.losses import ranking_critic_loss, wgan_critic_loss


def standardize(X, input_dim: int) -> torch.Tensor:
    """Centre ``X``, scale it to unit mean squared norm, and map it to ``input_dim``
    coordinates: its leading principal components when ``d > input_dim``, zero-padded
    when ``d < input_dim`` (padding changes no distance).

    Parameters
    ----------
    X : array-like of shape (n, d)
    input_dim : int

    Returns
    -------
    float32 Tensor of shape (n, input_dim).
    """
    x = torch.as_tensor(np.asarray(X, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise DeepclustError(f"X must be an (n, d) array with n >= 2; got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DeepclustError("X holds NaN or infinite values; clean or impute them first")
    x = x - x.mean(0, keepdim=True)
    if x.shape[1] > input_dim:
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        x = x @ v[:input_dim].t()
    scale = x.pow(2).sum(1).mean().sqrt()
    x = x / scale if scale > 0 else x
    if x.shape[1] < input_dim:
        x = F.pad(x, (0, input_dim - x.shape[1]))
    return x


def _label_tensor(y) -> torch.Tensor:
    """Any labels (strings, gaps in the numbers) as 0..k-1 in a LongTensor."""
    return torch.as_tensor(np.unique(np.asarray(y), return_inverse=True)[1].reshape(-1), dtype=torch.long)


def _one_hot(labels: torch.Tensor, n_clusters: int | None = None) -> torch.Tensor:
    """(..., n) integer labels -> (..., n, k) float one-hot."""
    k = int(labels.max()) + 1 if n_clusters is None else n_clusters
    return F.one_hot(labels, k).to(torch.float32)


def propagate(h: torch.Tensor, labels: torch.Tensor, n_clusters: int | None = None) -> torch.Tensor:
    """One graph-convolution step on the clique graph of ``labels``: every row becomes the
    mean of its cluster's rows (``D^-1/2 (A + I) D^-1/2 h`` with A joining the points of a
    cluster). Batched: ``h`` (..., n, f) and ``labels`` (..., n)."""
    onehot = _one_hot(labels, n_clusters)  # (..., n, k)
    sums = onehot.transpose(-1, -2) @ h  # (..., k, f)
    counts = onehot.sum(-2).clamp_min(1).unsqueeze(-1)
    return onehot @ (sums / counts)


def nearest_neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) indices of each point's ``k`` nearest other points (Euclidean), nearest first:
    :func:`deepclust.cluster.knn_graph` (blocked, exact up to 12,000 points, so no n x n
    matrix for a large image collection)."""

    indices, _ = knn_graph(x, min(k, len(x) - 1), random_state=0)
    return torch.as_tensor(indices, dtype=torch.long)


def neighbour_mean(h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Mean of every point's neighbours' rows: ``h`` (..., n, f), ``neighbours`` (n, k)."""
    return h[..., neighbours, :].mean(-2)


GRAPHS = ("cliques", "cliques+self", "cliques+knn")


class GraphAutoencoder(nn.Module):
    """Kipf and Welling's graph autoencoder on a clustering's clique graph: two
    graph-convolution layers (``hidden`` then ``embed`` units, ReLU between) give node
    embeddings Z; the decoder ``sigmoid(Z Z^T)`` reconstructs the adjacency.

    ``graph`` chooses what a layer sees:

    - ``"cliques"`` (the paper): ``A_hat H W`` on the clique graph, which averages each
      cluster, so Z depends only on the cluster means and sizes;
    - ``"cliques+self"``: plus a separate weight on the point's own row
      (``A_hat H W_c + H W_s``, GraphSAGE's root weight), so Z also sees how a point sits
      relative to its cluster (the within-cluster spread);
    - ``"cliques+knn"``: plus the mean of the point's nearest neighbours in the data
      (``... + N H W_n``, a second relation as in relational GCNs), so Z also sees whether
      a clustering cuts through the data's neighbourhoods (what separates moons and rings).
    """

    def __init__(self, input_dim: int, hidden: int = 32, embed: int = 16, graph: str = "cliques"):
        super().__init__()
        if graph not in GRAPHS:
            raise DeepclustError(f"graph={graph!r} is not one of {', '.join(GRAPHS)}")
        self.input_dim, self.embed, self.graph = input_dim, embed, graph
        widths = [(input_dim, hidden), (hidden, embed)]
        self.cluster = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in widths)
        self.own = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in widths) if graph != "cliques" else None
        self.near = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in widths) if graph == "cliques+knn" else None

    def _layer(self, i: int, h, labels, n_clusters, neighbours):
        out = propagate(self.cluster[i](h), labels, n_clusters)
        if self.own is not None:
            out = out + self.own[i](h)
        if self.near is not None:
            if neighbours is None:
                raise DeepclustError("graph='cliques+knn' needs the points' nearest neighbours")
            out = out + self.near[i](neighbour_mean(h, neighbours))
        return out

    def forward(self, x: torch.Tensor, labels: torch.Tensor, n_clusters: int | None = None,
                neighbours: torch.Tensor | None = None) -> torch.Tensor:
        h = F.relu(self._layer(0, x, labels, n_clusters, neighbours))
        return self._layer(1, h, labels, n_clusters, neighbours)

    def reconstruction_loss(self, x: torch.Tensor, labels: torch.Tensor,
                            neighbours: torch.Tensor | None = None) -> torch.Tensor:
        """Binary cross-entropy of ``sigmoid(Z Z^T)`` against the clique adjacency (self-loops
        included), positives weighted up to balance the two classes of pairs."""
        z = self(x, labels, neighbours=neighbours)
        logits = z @ z.t()
        target = (labels[:, None] == labels[None, :]).to(torch.float32)
        positives = target.sum()
        weight = (target.numel() - positives) / positives.clamp_min(1)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def clustering_embedding(autoencoder: GraphAutoencoder, x: torch.Tensor, labels: torch.Tensor,
                         n_clusters: int | None = None, neighbours: torch.Tensor | None = None) -> torch.Tensor:
    """The vector of a clustering: the upper triangle (diagonal included) of ``Z^T Z / n``,
    ``embed * (embed + 1) / 2`` numbers whatever the number of points. Dividing by n makes
    datasets of different sizes comparable (the gap the paper notes). Invariant to the
    order of the points and to renaming the clusters. Batched over leading dimensions of
    ``labels`` (a population of clusterings of the same ``x``)."""
    z = autoencoder(x, labels, n_clusters, neighbours)
    gram = z.transpose(-1, -2) @ z / z.shape[-2]
    rows, cols = torch.triu_indices(gram.shape[-1], gram.shape[-1])
    return gram[..., rows, cols]


class Critic(nn.Module):
    """The metric's scoring function c_theta: an MLP 256-256-512-512-1 with LeakyReLU(0.2)
    (no activation on the output), trained as a Wasserstein GAN critic.

    With ``penalised > 0`` the last ``penalised`` inputs bypass the MLP and lower the score
    linearly with learned non-negative weights (``- softplus(w) . e[-penalised:]``): a
    shape constraint for features where less is always better (the structure features).
    A free MLP fitted to a few labelled sets can reward them in some range (overlapping
    true blobs cut some neighbour pairs) and then prefers cutting clusters it never saw.
    """

    def __init__(self, input_dim: int, widths=(256, 256, 512, 512), penalised: int = 0):
        super().__init__()
        self.net = None
        if input_dim > penalised:  # else: the score is the penalty alone
            layers, last = [], input_dim - penalised
            for w in widths:
                layers += [nn.Linear(last, w), nn.LeakyReLU(0.2)]
                last = w
            layers.append(nn.Linear(last, 1))
            self.net = nn.Sequential(*layers)
        self.penalised = penalised
        self.penalty = nn.Parameter(torch.zeros(penalised)) if penalised else None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        free = e[..., :e.shape[-1] - self.penalised]
        score = self.net(free).squeeze(-1) if self.net is not None else e.new_zeros(e.shape[:-1])
        if self.penalised:
            score = score - (F.softplus(self.penalty) * e[..., -self.penalised:]).sum(-1)
        return score


def size_features(labels: torch.Tensor, max_clusters: int) -> torch.Tensor:
    """(..., n) labels -> (..., 2): the number of clusters used over ``max_clusters`` and the
    entropy of the cluster sizes over ``log(max_clusters)``. Independent of point order,
    label names and the number of points."""
    k = max(int(labels.max()) + 1 if labels.numel() else 1, max_clusters)
    share = _one_hot(labels, k).mean(-2)
    used = (share > 0).sum(-1, keepdim=True).to(torch.float32)
    entropy = -(share * share.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    return torch.cat([used / max_clusters, entropy / np.log(max(max_clusters, 2))], -1)


def mutual_neighbours(neighbours: torch.Tensor) -> torch.Tensor:
    """(n, m) bool: whether each point is also among its neighbour's neighbours."""
    n = len(neighbours)
    return (neighbours[neighbours] == torch.arange(n)[:, None, None]).any(-1)


def neighbour_components(labels: torch.Tensor, neighbours: torch.Tensor, links: torch.Tensor | None = None) -> torch.Tensor:
    """Connected components of each cluster in the nearest-neighbour graph: (..., n) labels,
    (n, m) neighbour indices -> (..., n) component ids (the smallest point index in the
    component). Two points are joined when one is among the other's neighbours and both
    carry the same label (and, with ``links`` (n, m) or (..., n, m) bool, only along the
    neighbour pairs it marks, e.g. :func:`mutual_neighbours`). A whole batch of clusterings
    (the search's population) is one sparse graph of ``batch * n`` nodes, one block per
    clustering, for scipy's ``connected_components``: no n x n matrix."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = labels.shape[-1]
    flat = labels.reshape(-1, n)
    same = flat[:, :, None] == flat[:, neighbours]  # (batch, n, m)
    if links is not None:
        same = same & links.reshape(-1, *neighbours.shape)
    block, i, j = np.nonzero(same.numpy())
    rows, cols = block * n + i, block * n + neighbours.numpy()[i, j]
    size = flat.shape[0] * n
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, comp = connected_components(graph, directed=False)
    _, first = np.unique(comp, return_index=True)  # nodes in order: a component's first is its smallest
    return torch.as_tensor(first[comp] % n, dtype=torch.long).reshape(labels.shape)


def neighbour_reach(x: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(n,) the distance from each point to the farthest of its listed neighbours: small in
    dense regions, large in sparse ones."""
    return (x[:, None, :] - x[neighbours]).norm(dim=-1).amax(-1)


def _outside_largest(labels: torch.Tensor, comp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Share of the weight outside each cluster's heaviest connected piece."""
    k = int(labels.max()) + 1
    w = weight.to(torch.float32).expand(labels.shape)
    sizes = torch.zeros(labels.shape, dtype=torch.float32).scatter_add(-1, comp, w)
    largest = torch.zeros(*labels.shape[:-1], k).scatter_reduce(-1, labels, sizes.gather(-1, comp), "amax")
    return 1 - largest.sum(-1) / w.sum(-1).clamp_min(1e-12)


def structure_features(labels: torch.Tensor, neighbours: torch.Tensor, mutual: bool = False,
                       reach: torch.Tensor | None = None, core_factor: float = 1.2,
                       concentration: bool = False, balance: bool = False) -> torch.Tensor:
    """(..., n) labels -> (..., 3): how a clustering sits on the data's nearest-neighbour
    graph, whatever the clusters' shapes. The share of neighbour pairs it cuts (a cluster
    split through a dense region cuts many), the share of points outside their cluster's
    largest connected piece (two separate groups merged into one cluster leave one of them
    outside), and the share of clusters no larger than a neighbourhood (a few stray points
    split off). A clustering whose clusters are the graph's dense, separate pieces scores
    (0, 0, 0) whether they are blobs, moons or rings; what a metric learns from blobs with
    these features can carry over to shapes it never saw. Independent of point order,
    label names and the number of points.

    With ``reach`` (n, :func:`neighbour_reach`), a fourth: the share of each cluster's core
    outside the largest piece of the graph between its core points, a point being in its
    cluster's core when its reach is at most ``core_factor`` times the cluster's mean reach.
    Two blobs put in one cluster are often joined through a few sparse margin points; their
    cores, without those points, fall apart (a density valley). A moon or a ring has about
    the same density all along, so its core stays one piece. The threshold is relative to
    each cluster, so a sparse outer ring is judged by its own density, not the inner one's.

    With ``concentration``, a last one: the sum of the squared cluster shares, the share of
    point pairs that a random labelling with these cluster sizes keeps together (the null
    model of modularity: 1 - cut - concentration is the clustering's modularity on the
    neighbour graph). Cutting no pairs is easy with few large clusters; this says how few
    pairs any clustering of these sizes would have kept. Where every clustering cuts many
    neighbour pairs (image embeddings), the cut share alone prefers the fewest clusters.

    With ``balance``, a last one: how unequal the cluster sizes are, ``1 - H / log k`` for
    the entropy H of the shares of the k clusters used (0 when all are the same size, 0 for
    one cluster). Two touching blobs merged cut fewer neighbour pairs than the truth and
    stay one piece, but make one cluster twice the others' size; cutting a moon or a ring
    in equal arcs leaves the sizes even but cuts pairs. Unlike ``concentration`` it does
    not depend on how many clusters there are, so it does not reward cutting. It is a
    prior the labelled sets teach: sets whose classes differ in size give it less weight."""
    n = labels.shape[-1]
    cut = (labels[..., :, None] != labels[..., neighbours]).to(torch.float32).mean((-1, -2))
    links = mutual_neighbours(neighbours) if mutual else None
    outside = _outside_largest(labels, neighbour_components(labels, neighbours, links), torch.ones(n))
    k = int(labels.max()) + 1
    counts = torch.zeros(*labels.shape[:-1], k).scatter_add_(-1, labels, torch.ones(labels.shape))
    used = (counts > 0).sum(-1).clamp_min(1)
    small = ((counts > 0) & (counts <= neighbours.shape[1])).sum(-1) / used
    parts = [cut, outside, small]
    if reach is not None:
        total = torch.zeros(*labels.shape[:-1], k).scatter_add_(-1, labels, reach.expand(labels.shape))
        mean_reach = total / counts.clamp_min(1)  # (..., k), no (..., n, k) one-hot on the search's hot path
        core = reach <= core_factor * mean_reach.gather(-1, labels)  # (..., n)
        core_links = core[..., :, None] & core[..., neighbours]
        if links is not None:
            core_links = core_links & links
        parts.append(_outside_largest(labels, neighbour_components(labels, neighbours, core_links), core))
    if concentration:
        parts.append((counts / n).pow(2).sum(-1))
    if balance:
        share = counts / n
        entropy = -(share * share.clamp_min(1e-12).log()).sum(-1)
        parts.append(torch.where(used > 1, 1 - entropy / used.to(torch.float32).log().clamp_min(1e-12),
                                 torch.zeros_like(entropy)))
    return torch.stack(parts, -1)


def clip_weights(critic: Critic, clip: float = 0.01) -> None:
    """The original WGAN's Lipschitz constraint: every weight clipped to [-clip, clip]."""
    with torch.no_grad():
        for p in critic.parameters():
            p.clamp_(-clip, clip)


class _Population:
    """Clustering networks of Algorithm 1, a whole population at once: ``input_dim`` -> 16
    ReLU units -> ``max_clusters`` outputs, label = argmax."""

    def __init__(self, input_dim: int, max_clusters: int, hidden: int = 16):
        self.shapes = [(input_dim, hidden), (hidden,), (hidden, max_clusters), (max_clusters,)]
        self.size = sum(int(np.prod(s)) for s in self.shapes)

    def labels(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(P, size) weight vectors, (n, input_dim) points -> (P, n) labels."""
        parts, start = [], 0
        for shape in self.shapes:
            count = int(np.prod(shape))
            parts.append(weights[:, start:start + count].reshape(len(weights), *shape))
            start += count
        w1, b1, w2, b2 = parts
        h = F.relu(torch.einsum("nd,pdh->pnh", x, w1) + b1[:, None, :])
        return (torch.einsum("pnh,phk->pnk", h, w2) + b2[:, None, :]).argmax(-1)


def cem_search(score, x: torch.Tensor, max_clusters: int, population: int = 100, elite: float = 0.1,
               iterations: int = 30, init_std: float = 1.0, extra_std: float = 0.1, generator=None,
               hidden: int = 16, with_elite: bool = False):
    """Algorithm 1: the Cross-Entropy Method over the weights of a clustering network.

    Parameters
    ----------
    score : callable
        ``score(labels)`` with labels (P, n) -> (P,) scores to maximise.
    x : Tensor of shape (n, input_dim)
    max_clusters : int
        Outputs of the network, the most clusters a solution can use.
    population, elite, iterations
        Weight vectors sampled per iteration, the fraction kept to refit the Gaussian, and
        the number of iterations.
    init_std : float
        Initial standard deviation of every weight.
    extra_std : float
        Noise added to the refitted standard deviation (``sqrt(var + extra_std**2)``, the
        "noisy CEM" of Szita and Lorincz, 2006), so the search does not freeze on the first
        elite it finds.
    generator : torch.Generator or None

    Returns
    -------
    labels : LongTensor of shape (n,)
        The best clustering seen (labels renumbered 0..k-1 in order of appearance).
    curve : list of float
        The best score after each iteration (non-decreasing).
    elite : list of LongTensor
        With ``with_elite=True``: the distinct clusterings of the last iteration's elite
        (what a critic in training should learn to score lower).
    """
    if not 0 < elite <= 1 or population < 2 or iterations < 1:
        raise DeepclustError(f"need population >= 2, 0 < elite <= 1, iterations >= 1; got {population}, {elite}, {iterations}")
    nets = _Population(x.shape[1], max_clusters, hidden)
    mean = torch.zeros(nets.size)
    std = torch.full((nets.size,), float(init_std))
    n_elite = max(1, int(round(elite * population)))
    best_score, best_labels, curve = -float("inf"), None, []
    for _ in range(iterations):
        weights = mean + std * torch.randn(population, nets.size, generator=generator)
        labels = nets.labels(weights, x)
        with torch.no_grad():
            scores = torch.as_tensor(score(labels), dtype=torch.float32)
        order = torch.argsort(scores, descending=True)
        if best_labels is None or float(scores[order[0]]) > best_score:
            best_score, best_labels = float(scores[order[0]]), labels[order[0]].clone()
        top = weights[order[:n_elite]]
        mean, std = top.mean(0), (top.var(0, unbiased=False) + extra_std ** 2).sqrt()
        curve.append(best_score)
    if not with_elite:
        return relabel(best_labels), curve
    distinct = {tuple(relabel(c).tolist()) for c in labels[order[:n_elite]]}
    return relabel(best_labels), curve, [torch.tensor(c) for c in sorted(distinct)]


def relabel(labels: torch.Tensor) -> torch.Tensor:
    """Labels renumbered 0..k-1 in order of first appearance (the clusters are unchanged)."""
    _, first = np.unique(labels.numpy(), return_index=True)
    mapping = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    for new, old in enumerate(labels.numpy()[np.sort(first)]):
        mapping[old] = new
    return mapping[labels]


def classic_candidates(x: torch.Tensor, max_clusters: int, random_state=None) -> torch.Tensor:
    """Clusterings of ``x`` by classic algorithms for every k from 2 to ``max_clusters``:
    k-means and Ward's and single-linkage agglomerative clustering (the last two skipped
    above 5,000 points, where their n x n memory grows large). The learned metric chooses
    among them and the Cross-Entropy Method's result (the "better optimisation" the paper
    asks for; single linkage follows non-convex shapes such as moons and rings).
    Returns a LongTensor of shape (n_candidates, n)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from sklearn.cluster import KMeans

    data = x.numpy().astype(np.float64)
    top = min(max_clusters, len(data) - 1)
    out = [KMeans(k, n_init=3, random_state=random_state).fit_predict(data) for k in range(2, top + 1)]
    if len(data) <= 5000:
        for method in ("ward", "single"):
            tree = linkage(data, method)
            out += [fcluster(tree, k, criterion="maxclust") - 1 for k in range(2, top + 1)]
    unique = {tuple(relabel(torch.as_tensor(c, dtype=torch.long)).tolist()) for c in out}
    return torch.tensor(sorted(unique), dtype=torch.long)


def rotate_points(x: torch.Tensor, dims: int, generator: torch.Generator) -> torch.Tensor:
    """``x`` turned by a random orthogonal map of its first ``dims`` coordinates (the rest,
    zero padding, untouched). Distances, nearest neighbours and any clustering's quality are
    unchanged; the metric's layers see a new view of the same labelled set."""
    q, r = torch.linalg.qr(torch.randn(dims, dims, generator=generator))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
    out = x.clone()
    out[:, :dims] = x[:, :dims] @ q
    return out


def near_misses(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Wrong clusterings close to the true one ``y``: everything in one cluster, random
    labels with the true k, one true cluster split in two (by the side of a random
    hyperplane through its mean), and two true clusters merged."""
    k = int(y.max()) + 1
    out = [torch.zeros_like(y), torch.randint(0, k, y.shape, generator=generator)]
    sizes = torch.bincount(y, minlength=k)
    splittable = torch.nonzero(sizes >= 2).flatten()
    if len(splittable):
        c = int(splittable[torch.randint(len(splittable), (1,), generator=generator)])
        members = y == c
        direction = torch.randn(x.shape[1], generator=generator)
        side = ((x[members] - x[members].mean(0)) @ direction) > 0
        if 0 < int(side.sum()) < int(members.sum()):
            split = y.clone()
            split[torch.nonzero(members).flatten()[side]] = k
            out.append(split)
    if k >= 2:
        a, b = torch.randperm(k, generator=generator)[:2].tolist()
        merged = y.clone()
        merged[merged == b] = a
        out.append(merged)
    return out


# settings used only by fit_predict's search: a saved metric can be loaded with others
SEARCH_SETTINGS = ("whiten", "population", "elite", "iterations", "extra_std", "init_std")


def pooled_whitening(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``x`` (n, d, from :func:`standardize`) whitened by the pooled within-cluster
    covariance of ``labels`` (n,), then standardised again.

    Clusters that share one covariance (the same shear or stretch) become round. Zero
    columns (the padding of :func:`standardize`) stay zero; directions with almost no
    within-cluster variance (below 1e-6 of the largest) are not blown up.
    """
    active = x.abs().amax(0) > 0
    z = x[:, active].double()
    ids = torch.unique(labels, return_inverse=True)[1]
    k = int(ids.max()) + 1
    means = torch.zeros(k, z.shape[1], dtype=z.dtype).index_add_(0, ids, z)
    means /= torch.bincount(ids, minlength=k).clamp_min(1).unsqueeze(1).to(z.dtype)
    centred = z - means[ids]
    values, vectors = torch.linalg.eigh(centred.T @ centred / len(z))
    values = values.clamp_min(float(values.max()) * 1e-6 + 1e-30)
    white = torch.zeros_like(x)
    white[:, active] = (z @ vectors @ torch.diag(values.rsqrt()) @ vectors.T).float()
    return standardize(white, x.shape[1])


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
                used = _one_hot(labels, self.max_clusters).amax(-2).sum(-1)
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

    def _check_params(self) -> None:
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
        self._check_params()
        pairs, dims = [], []
        for i, item in enumerate(datasets):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DeepclustError(f"datasets[{i}] must be an (X, y) pair")
            points = self._points(item[0])
            x, y = points[0], _label_tensor(item[1])
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
            return [float(self.critic_(self._embed(points, _label_tensor(y)))) for y in labelings]

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


def mislabel(y, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """A copy of the labels ``y`` with ``round(fraction * n)`` random points moved to another
    (random, different) existing cluster."""
    y = np.asarray(y).copy()
    classes = np.unique(y)
    if len(classes) < 2:
        raise DeepclustError("mislabelling needs at least two clusters")
    picked = generator.choice(len(y), int(round(fraction * len(y))), replace=False)
    for i in picked:
        y[i] = generator.choice(classes[classes != y[i]])
    return y


def mislabel_scores(metric: "C2M", X, y, fractions=tuple(np.linspace(0, 1, 11)), copies: int = 10,
                    random_state=None) -> np.ndarray:
    """The paper's critic check (its Figure 2): the metric's score of ``copies`` clusterings
    with each fraction of the points mislabelled. Returns (len(fractions), copies) scores; a
    good metric falls as the fraction grows."""
    generator = np.random.default_rng(random_state)
    labelings = [mislabel(y, f, generator) for f in fractions for _ in range(copies)]
    return np.array(metric.score_many(X, labelings)).reshape(len(fractions), copies)


def truth_rank(metric: "C2M", X, y, candidates) -> int:
    """The paper's Table 4 measure for one dataset: the rank of the true clustering among
    ``candidates`` by the metric (1 = best; candidates equal to the truth are left out)."""
    from sklearn.metrics import adjusted_rand_score

    wrong = [c for c in candidates if adjusted_rand_score(y, np.asarray(c)) < 1.0]
    truth, *others = metric.score_many(X, [y] + wrong)
    return 1 + sum(score > truth for score in others)

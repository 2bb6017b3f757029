"""The Cross-Entropy Method over a population of clustering networks (Algorithm 1), the
classic candidates it also weighs, and the whitening of a second search."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deepclust.cluster.c2m.graph import standardize
from deepclust.errors import DeepclustError


class Population:
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
    nets = Population(x.shape[1], max_clusters, hidden)
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

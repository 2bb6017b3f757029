"""Structure features of a clustering on the data's neighbour graph: sizes, cut pairs,
mutual-neighbour pieces, dense cores, balance, concentration."""

from __future__ import annotations

import numpy as np
import torch

from deepclust.cluster.c2m.graph import one_hot


def size_features(labels: torch.Tensor, max_clusters: int) -> torch.Tensor:
    """(..., n) labels -> (..., 2): the number of clusters used over ``max_clusters`` and the
    entropy of the cluster sizes over ``log(max_clusters)``. Independent of point order,
    label names and the number of points."""
    k = max(int(labels.max()) + 1 if labels.numel() else 1, max_clusters)
    share = one_hot(labels, k).mean(-2)
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


def outside_largest(labels: torch.Tensor, comp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
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
    outside = outside_largest(labels, neighbour_components(labels, neighbours, links), torch.ones(n))
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
        parts.append(outside_largest(labels, neighbour_components(labels, neighbours, core_links), core))
    if concentration:
        parts.append((counts / n).pow(2).sum(-1))
    if balance:
        share = counts / n
        entropy = -(share * share.clamp_min(1e-12).log()).sum(-1)
        parts.append(torch.where(used > 1, 1 - entropy / used.to(torch.float32).log().clamp_min(1e-12),
                                 torch.zeros_like(entropy)))
    return torch.stack(parts, -1)

"""The clique graph of a clustering and its size-independent embedding: standardised inputs,
one graph-convolution step from cluster means, the graph autoencoder (Kipf and Welling 2016)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepclust.cluster.neighbors import knn_graph
from deepclust.errors import DeepclustError


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


def label_tensor(y) -> torch.Tensor:
    """Any labels (strings, gaps in the numbers) as 0..k-1 in a LongTensor."""
    return torch.as_tensor(np.unique(np.asarray(y), return_inverse=True)[1].reshape(-1), dtype=torch.long)


def one_hot(labels: torch.Tensor, n_clusters: int | None = None) -> torch.Tensor:
    """(..., n) integer labels -> (..., n, k) float one-hot."""
    k = int(labels.max()) + 1 if n_clusters is None else n_clusters
    return F.one_hot(labels, k).to(torch.float32)


def propagate(h: torch.Tensor, labels: torch.Tensor, n_clusters: int | None = None) -> torch.Tensor:
    """One graph-convolution step on the clique graph of ``labels``: every row becomes the
    mean of its cluster's rows (``D^-1/2 (A + I) D^-1/2 h`` with A joining the points of a
    cluster). Batched: ``h`` (..., n, f) and ``labels`` (..., n)."""
    onehot = one_hot(labels, n_clusters)  # (..., n, k)
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

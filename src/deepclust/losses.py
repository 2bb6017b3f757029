"""Losses of the methods, as plain functions of tensors.

Every function takes its device and dtype from its inputs and returns a scalar tensor
(or logits) that autograd can differentiate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_means(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature vector of each class present in ``labels``.

    Parameters
    ----------
    features : Tensor of shape (n, d)
    labels : integer Tensor of shape (n,)

    Returns
    -------
    means : Tensor of shape (k, d)
        One row per distinct label, in increasing label order.
    inverse : integer Tensor of shape (n,)
        Row of ``means`` that belongs to each sample.
    """
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        raise ValueError(
            f"features must be (n, d) and labels (n,); got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = features.new_zeros((len(classes), features.shape[1])).index_add(0, inverse, features)
    counts = torch.bincount(inverse, minlength=len(classes)).to(features.dtype)
    return sums / counts[:, None], inverse


def scatter_loss(features: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Multivariate scatter loss of Bjerge et al. (VISAPP 2025), eq. 1.

    .. math::

        L_m = \\frac{\\sum_k \\sum_{n \\in S_k} \\lVert X_n - \\bar X_k \\rVert^2}
                   {\\sum_{i<j} \\lVert \\bar X_i - \\bar X_j \\rVert^2}

    The within-class scatter (sum of squared distances of the samples to their class
    mean) over the sum, over pairs of classes, of the squared distances between class
    means. Exactly the paper's equation: sums, not averages, on both sides (the
    published code does the same). The episodic method applies it to the support set,
    as the paper states.

    Parameters
    ----------
    features : float Tensor of shape (n, d)
    labels : integer Tensor of shape (n,)
        At least two distinct labels.
    eps : float
        Lower bound of the denominator, so that classes whose means coincide give a
        large finite loss instead of ``inf``/``nan``.

    Returns
    -------
    Tensor
        A scalar, >= 0.
    """
    means, inverse = class_means(features, labels)
    k = len(means)
    if k < 2:
        raise ValueError(f"scatter_loss needs samples of at least 2 classes; got {k}")
    within = (features - means[inverse]).pow(2).sum()
    # sum_{i<j} |m_i - m_j|^2 = k * sum_i |m_i|^2 - |sum_i m_i|^2, without a k x k matrix;
    # computed around the grand mean for accuracy (the identity is translation-invariant).
    centred = means - means.mean(dim=0, keepdim=True)
    between = k * centred.pow(2).sum() - centred.sum(dim=0).pow(2).sum()
    return within / between.clamp_min(eps)


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class prototypes of a Prototypical Network: the mean support embedding per class.

    Parameters
    ----------
    support : Tensor of shape (n_support, d)
    support_labels : integer Tensor of shape (n_support,) with values in ``0 .. n_classes-1``
    n_classes : int

    Returns
    -------
    Tensor of shape (n_classes, d)
    """
    means, _ = class_means(support, support_labels)
    if len(means) != n_classes:
        raise ValueError("every class needs at least one support sample")
    return means


def prototypical_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Logits of eq. 2 (Snell et al., 2017): minus the Euclidean distance to each prototype.

    Parameters
    ----------
    query : Tensor of shape (n_query, d)
    protos : Tensor of shape (n_classes, d)

    Returns
    -------
    Tensor of shape (n_query, n_classes)
    """
    return -torch.cdist(query, protos)


def prototypical_loss(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, query_labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the queries against the prototypes of the support set (eq. 2)."""
    n_classes = int(support_labels.max()) + 1
    return F.cross_entropy(prototypical_logits(query, prototypes(support, support_labels, n_classes)), query_labels)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, n_iters: int = 3, epsilon: float = 0.05, distributed: bool = False) -> torch.Tensor:
    """Soft assignments of a batch to prototypes with equal use of every prototype: the
    Sinkhorn-Knopp solution of SwAV's entropy-regularised transport problem (IMC-SwAV,
    eq. 3-4).

    Starting from ``exp(scores / epsilon)``, the matrix is scaled alternately so that every
    prototype (column) receives ``1 / k'`` of the mass and every sample (row) ``1 / m``;
    ``n_iters`` rounds of both. The result is rescaled so each row sums to 1.

    Parameters
    ----------
    scores : Tensor of shape (m, k')
        Similarities of m samples to k' prototypes (cosines in SwAV).
    n_iters : int
        Rounds of column and row scaling (SwAV: 3).
    epsilon : float
        Entropy weight; smaller is closer to a hard assignment (SwAV: 0.05).
    distributed : bool
        Under DDP, the batch is the union of every rank's rows: the sums are all-reduced,
        so each rank receives its rows of the global solution. Off, nothing is reduced.

    Returns
    -------
    Tensor of shape (m, k'): non-negative, each row sums to 1 and, as ``n_iters`` grows,
    each column to ``m_total / k'``. No gradient flows through it.
    """
    import torch.distributed as dist

    if scores.ndim != 2:
        raise ValueError(f"scores must be an (m, k') matrix; got shape {tuple(scores.shape)}")
    if n_iters < 1 or epsilon <= 0:
        raise ValueError(f"need n_iters >= 1 and epsilon > 0; got n_iters={n_iters}, epsilon={epsilon}")
    reduce = distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    logits = scores.float() / epsilon
    top = logits.max().clone()
    if reduce:
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - top)  # the shift cancels in the normalisations; it avoids overflow
    m = torch.tensor(float(len(q)), device=q.device)
    total = q.sum()
    if reduce:
        dist.all_reduce(m)
        dist.all_reduce(total)
    q /= total
    k = q.shape[1]
    for _ in range(n_iters):
        columns = q.sum(0)
        if reduce:
            dist.all_reduce(columns)
        q /= columns.clamp_min(torch.finfo(q.dtype).tiny) * k  # every prototype holds 1/k' of the mass
        q /= q.sum(1, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny) * m  # every sample 1/m
    return q * m


def swapped_prediction_loss(scores: list[torch.Tensor], n_assign: int = 2, temperature: float = 0.1,
                            n_iters: int = 3, epsilon: float = 0.05, distributed: bool = False) -> torch.Tensor:
    """SwAV's swapped prediction (IMC-SwAV, eq. 1): the codes q of each of the first
    ``n_assign`` views (Sinkhorn on their scores, no gradient) are predicted from every
    other view's softmax over prototypes at ``temperature``; cross-entropy averaged over
    those pairs.

    Parameters
    ----------
    scores : list of V Tensors of shape (m, k')
        Prototype scores (cosines) of the same m images under V views, high-resolution
        views first.
    """
    if len(scores) < 2 or not 1 <= n_assign <= len(scores):
        raise ValueError(f"need at least 2 views and 1 <= n_assign <= views; got {len(scores)} views, n_assign={n_assign}")
    log_probs = [F.log_softmax(s / temperature, dim=1) for s in scores]
    terms = []
    for i in range(n_assign):
        q = sinkhorn(scores[i].detach(), n_iters, epsilon, distributed)
        terms += [-(q * log_probs[v]).sum(1).mean() for v in range(len(scores)) if v != i]
    return torch.stack(terms).mean()


def information_loss(y: torch.Tensor, u: torch.Tensor, beta: float = 4.0, eps: float = 1e-12) -> torch.Tensor:
    """IMC-SwAV's clustering objective for one pair of views (eq. 6): ``H(Y|U) - beta H(Y)``
    from the joint distribution ``p(u, y) = Y^T U / m``.

    Low when the predicted cluster is a confident function of the prototype codes
    (``H(Y|U)`` near 0) and the clusters are used equally (``H(Y)`` near ``log k``): the
    minimum is ``-beta log k``; a collapse to one cluster scores 0.

    Parameters
    ----------
    y : Tensor of shape (m, k)
        Cluster probabilities (rows sum to 1) of one view.
    u : Tensor of shape (m, k')
        Prototype codes (rows sum to 1) of the same images under another (or the same) view.
    """
    if y.ndim != 2 or u.ndim != 2 or len(y) != len(u):
        raise ValueError(f"y and u must be (m, k) and (m, k') of the same m; got {tuple(y.shape)} and {tuple(u.shape)}")
    joint = y.t() @ u
    joint = joint / joint.sum()  # (k, k'); rows of y and u sum to 1, so this divides by m
    p_u = joint.sum(0, keepdim=True)
    p_y = joint.sum(1)
    conditional = (joint * (torch.log(p_u.clamp_min(eps)) - torch.log(joint.clamp_min(eps)))).sum()
    marginal = -(p_y * torch.log(p_y.clamp_min(eps))).sum()
    return conditional - beta * marginal


def multi_view_information_loss(ys: list[torch.Tensor], us: list[torch.Tensor], beta: float = 4.0) -> torch.Tensor:
    """Eq. 6 over every pair of views: the mean of :func:`information_loss` (Y of view j,
    U of view i) over all V x V pairs."""
    if len(ys) != len(us) or not ys:
        raise ValueError(f"need the same number of views of Y and U; got {len(ys)} and {len(us)}")
    return torch.stack([information_loss(y, u, beta) for u in us for y in ys]).mean()


def wgan_critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The Wasserstein critic's loss to minimise (C2M's eq. 6): ``mean(fake) - mean(real)``
    of the critic's scores (it raises the true clusterings' scores and lowers the others')."""
    return fake.mean() - real.mean()


def ranking_critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The per-dataset form of C2M's eq. 5 constraint (the true clustering above every other
    clustering of the *same* data): ``softplus(fake_i - real_i)`` averaged over the critic's
    scores, ``real[i]`` being the score of the truth of the dataset ``fake[i]`` was made from.
    The pooled Wasserstein loss only separates the two crowds, and datasets with different
    numbers of clusters sit in different places of the embedding, so a truth can lose to its
    own wrong clusterings."""
    return F.softplus(fake - real).mean()

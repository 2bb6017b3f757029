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

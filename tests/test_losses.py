"""The losses of the methods: hand-computed values, properties, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from deepclust.losses import prototypes, prototypical_logits, prototypical_loss, scatter_loss


def brute_force_scatter(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1 written out literally: loops over classes and class pairs."""
    classes = sorted(set(labels.tolist()))
    means = {c: features[labels == c].mean(0) for c in classes}
    within = sum(((features[labels == c] - means[c]) ** 2).sum() for c in classes)
    between = sum(((means[a] - means[b]) ** 2).sum() for a, b in itertools.combinations(classes, 2))
    return within / between


def test_scatter_loss_matches_a_hand_computed_example():
    # class 0: (0,0), (2,0) -> mean (1,0), scatter 1 + 1; class 1: (0,4), (0,6) -> mean (0,5), scatter 1 + 1;
    # class 2: (10,0) alone -> scatter 0. Pairs: |m0-m1|^2 = 1 + 25, |m0-m2|^2 = 81, |m1-m2|^2 = 100 + 25.
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0], [10.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    assert scatter_loss(x, y).item() == pytest.approx(4.0 / (26 + 81 + 125))
    assert scatter_loss(x[:4], y[:4]).item() == pytest.approx(4.0 / 26)


def test_scatter_loss_equals_the_literal_equation_on_random_data_with_unequal_classes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 7, generator=g, dtype=torch.float64)
    y = torch.tensor([3] * 5 + [7] * 12 + [9] * 3 + [11] * 20)  # unequal counts, labels not 0..k-1
    assert scatter_loss(x, y).item() == pytest.approx(brute_force_scatter(x, y).item(), rel=1e-10)


def test_scatter_loss_is_invariant_to_renaming_the_classes_and_reordering_the_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.arange(30) % 4
    perm = torch.randperm(30, generator=g)
    renamed = torch.tensor([2, 0, 3, 1])[y]
    assert scatter_loss(x[perm], renamed[perm]).item() == pytest.approx(scatter_loss(x, y).item(), rel=1e-12)


def test_scatter_loss_decreases_when_classes_are_pulled_apart_or_tightened():
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(5, 16, generator=g)
    y = torch.arange(5).repeat_interleave(6)
    noise = 0.5 * torch.randn(30, 16, generator=g)
    base = scatter_loss(centres[y] + noise, y)
    assert scatter_loss(3 * centres[y] + noise, y) < base  # means farther apart
    assert scatter_loss(centres[y] + 0.5 * noise, y) < base  # classes tighter
    # and gradient descent on the features lowers it
    x = (centres[y] + noise).requires_grad_(True)
    loss = scatter_loss(x, y)
    loss.backward()
    with torch.no_grad():
        assert scatter_loss(x - 0.1 * x.grad, y) < loss


def test_scatter_loss_stays_finite_when_the_class_means_coincide():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])  # both means at the origin: the denominator is 0
    loss = scatter_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 1e6
    assert torch.isfinite(x.grad).all()


def test_scatter_loss_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        scatter_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_prototypical_logits_are_minus_the_euclidean_distance_to_the_class_means():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    protos = prototypes(support, labels, 2)
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    query = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    logits = prototypical_logits(query, protos)
    assert torch.allclose(logits, -torch.tensor([[0.0, 17 ** 0.5], [20 ** 0.5, 3.0]]))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert prototypical_loss(support, labels, query, torch.tensor([0, 1])).item() == pytest.approx(expected.item())

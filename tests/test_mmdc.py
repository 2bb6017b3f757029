"""MMDC's pieces: targets, the per-batch Hungarian step, the cluster rule, the ensemble vote."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deepclust.data.transforms import sobel
from deepclust.errors import DeepclustError
from deepclust.methods.mmdc import align_labels, gmm_targets, majority_vote, nearest_mean, reassign_targets


def test_targets_lie_on_the_sphere_and_cluster_around_the_one_hot_means():
    targets, components = gmm_targets(10_000, 10, sigma=0.05, random_state=0)
    assert targets.shape == (10_000, 10) and targets.dtype == np.float32
    assert np.allclose(np.linalg.norm(targets, axis=1), 1.0, atol=1e-6)
    counts = np.bincount(components, minlength=10)
    assert counts.min() > 900 and counts.max() < 1100  # equally likely components
    assert np.mean(nearest_mean(targets) == components) > 0.95
    for k in range(10):  # each component's mean direction is its one-hot vector
        assert np.argmax(targets[components == k].mean(axis=0)) == k
    tight, tight_components = gmm_targets(10_000, 10, sigma=0.005, random_state=0)
    spread = lambda t, c: np.mean(t[np.arange(len(c)), c])  # noqa: E731  mean cosine to the own mean
    assert spread(tight, tight_components) > spread(targets, components)


def test_targets_are_seeded():
    a, ca = gmm_targets(50, 4, random_state=3)
    b, cb = gmm_targets(50, 4, random_state=3)
    c, _ = gmm_targets(50, 4, random_state=4)
    assert np.array_equal(a, b) and np.array_equal(ca, cb) and not np.array_equal(a, c)
    with pytest.raises(DeepclustError, match="n_clusters=1 must be an integer >= 2"):
        gmm_targets(10, 1)
    with pytest.raises(DeepclustError, match="sigma=0 must be a positive number"):
        gmm_targets(10, 3, sigma=0)


def test_the_batch_hungarian_step_never_increases_the_total_distance_and_is_optimal():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        b = 6 if trial < 5 else 64
        outputs = torch.nn.functional.normalize(torch.randn(b, 5, generator=g), dim=1)
        targets = torch.nn.functional.normalize(torch.randn(b, 5, generator=g), dim=1)
        order = reassign_targets(outputs, targets)
        assert sorted(order.tolist()) == list(range(b))  # a permutation of the batch's own targets
        before = (outputs - targets).norm(dim=1).sum()
        after = (outputs - targets[order]).norm(dim=1).sum()
        assert after <= before + 1e-6
        if b == 6:
            best = min((outputs - targets[list(p)]).norm(dim=1).sum() for p in itertools.permutations(range(6)))
            assert after == pytest.approx(float(best), abs=1e-5)


def test_nearest_mean_is_the_closest_one_hot_vector():
    outputs = torch.nn.functional.normalize(torch.randn(100, 7, generator=torch.Generator().manual_seed(1)), dim=1)
    distances = torch.cdist(outputs, torch.eye(7))
    assert np.array_equal(nearest_mean(outputs), distances.argmin(dim=1).numpy())


def test_label_alignment_undoes_a_renaming():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 6, size=200)
    renamed = rng.permutation(6)[reference]
    assert np.array_equal(align_labels(reference, renamed, 6), reference)


def test_majority_vote_is_invariant_to_renaming_the_clusters_of_any_run():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, size=300)
    runs = []
    for _ in range(5):
        noisy = truth.copy()
        flip = rng.random(300) < 0.2
        noisy[flip] = rng.integers(0, 4, size=flip.sum())
        runs.append(noisy)
    vote = majority_vote(runs, reference=0, n_clusters=4)
    renamed = [runs[0]] + [rng.permutation(4)[r] for r in runs[1:]]
    assert np.array_equal(majority_vote(renamed, reference=0, n_clusters=4), vote)
    assert np.mean(vote == truth) > max(np.mean(r == truth) for r in runs)  # the ensemble beats every member


def test_majority_vote_ties_go_to_the_reference_run():
    reference = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    other = reference.copy()
    other[0] = 1  # one disagreement: alignment stays the identity, image 0 is a 1-1 tie
    assert majority_vote([reference, other], reference=0, n_clusters=3).tolist() == reference.tolist()
    assert majority_vote([other, reference], reference=0, n_clusters=3).tolist() == other.tolist()


def test_sobel_responds_to_edges_across_its_direction_only():
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # a vertical edge
    grad = sobel(image)
    assert grad.shape == (1, 2, 8, 8)
    assert grad[0, 0, 2:6, 3:5].abs().min() > 0  # x-gradient at the edge
    assert grad[0, 1, 1:7, 1:7].abs().max() == 0  # no y-gradient away from the border
    assert torch.allclose(sobel(2 * image), 2 * grad)  # linear
    shifted = sobel(image + 0.3)  # a constant offset changes nothing away from the zero-padded border
    assert torch.allclose(shifted[..., 1:-1, 1:-1], grad[..., 1:-1, 1:-1], atol=1e-5)


@pytest.mark.parametrize("name, size, in_chans, n_blocks, width", [
    ("mmdc_vgg3", 28, 1, 3, 256), ("mmdc_vgg3", 32, 2, 3, 256), ("mmdc_vgg4", 96, 3, 4, 512),
])
def test_vgg_trunks_are_blocks_of_two_conv_bn_relu_then_max_pool(name, size, in_chans, n_blocks, width):
    import timm

    from deepclust.methods.base import feature_layers

    model = timm.create_model(name, in_chans=in_chans, num_classes=0)
    assert len(model.blocks) == n_blocks and len(feature_layers(model)[1]) == n_blocks
    kinds = [type(m).__name__ for m in model.blocks[0]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert model.blocks[0][0].in_channels == in_chans
    assert model(torch.zeros(2, in_chans, size, size)).shape == (2, width) == (2, model.num_features)


def test_rotations_turn_each_image_four_times_with_matching_labels():
    from deepclust.data.transforms import rotations

    image = torch.arange(9.0).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    rotated, labels = rotations(torch.cat([image, image + 10]))
    assert rotated.shape == (8, 1, 3, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rotated[0, 0].tolist() == image[0, 0].tolist()
    assert rotated[2, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # 90 degrees counter-clockwise
    assert rotated[4, 0].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]  # 180 degrees
    assert torch.equal(rotated[1], image[0] + 10)  # all images at 0 degrees come first
    assert torch.equal(rotated[3], rotated[2] + 10)  # then all at 90 degrees


def _bars(n_per_class: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated kinds of 16-pixel images: a horizontal bar, a vertical bar, a cross-less ring."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    ring = (np.abs(np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) - size / 3.5) < 1.2).astype(np.float32)
    for label in range(3):
        for _ in range(n_per_class):
            img = np.zeros((size, size), np.float32)
            pos = rng.integers(4, size - 4)
            if label == 0:
                img[pos - 1: pos + 1, 2:-2] = 1.0
            elif label == 1:
                img[2:-2, pos - 1: pos + 1] = 1.0
            else:
                img = np.roll(ring, rng.integers(-2, 3), axis=rng.integers(0, 2))
            img += 0.05 * rng.standard_normal(img.shape).astype(np.float32)
            images.append(img[None])
            labels.append(label)
    return np.clip(np.stack(images), 0, 1), np.array(labels)


def test_a_short_mmdc_run_recovers_a_tiny_well_separated_set():
    from deepclust.methods.mmdc import MMDC
    from deepclust.metrics import adjusted_rand

    images, labels = _bars(40)
    # no rotation task: a rotated horizontal bar *is* a vertical bar in this toy set
    model = MMDC(n_clusters=3, backbone="conv4", sobel=False, rotation_task=False, epochs=20, batch_size=40,
                 lr=0.05, random_state=0)
    predicted = model.fit_predict(images)
    assert adjusted_rand(labels, predicted) > 0.9
    assert model.loss_curve_[-1] < 0.5 * model.loss_curve_[0]  # the clustering loss fell
    assert np.array_equal(model.predict(images), predicted)


def test_rotation_epochs_alternate_with_clustering_epochs():
    from deepclust.methods.mmdc import MMDC

    images, _ = _bars(10)
    model = MMDC(n_clusters=3, backbone="conv4", epochs=4, batch_size=10, random_state=0).fit(images)
    assert len(model.loss_curve_) == 2 and model.labels_.shape == (30,)
    with pytest.raises(DeepclustError, match="n_clusters=40 must be <= the number of images .30."):
        MMDC(n_clusters=40, backbone="conv4", epochs=1).fit(images)

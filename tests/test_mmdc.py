"""MMDC's pieces: targets, the per-batch Hungarian step, the cluster rule, the ensemble vote."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deepclust.data.transforms import sobel
from conftest import SHARED
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

    from deepclust.methods.finetune.base import feature_layers

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


def test_a_short_mmdc_ensemble_recovers_a_tiny_well_separated_set():
    from deepclust.methods.mmdc import MMDC, combine_runs
    from deepclust.metrics import adjusted_rand

    images, labels = _bars(30)
    # no rotation task: a rotated horizontal bar *is* a vertical bar in this toy set. Single runs can
    # settle in a poor permutation (a class split, two merged) with a high loss; the paper's remedy is
    # the lowest-loss run of several.
    models = [MMDC(n_clusters=3, backbone="conv4", sobel=False, rotation_task=False, epochs=12, batch_size=15,
                   lr=0.05, flip=False, crop_scale=(0.8, 1.0), random_state=seed).fit(images) for seed in range(3)]
    aris = [adjusted_rand(labels, m.labels_) for m in models]
    best = combine_runs([m.labels_ for m in models], [m.loss_ for m in models], n_clusters=3)
    assert adjusted_rand(labels, best["lowest_loss"]) > 0.9 and adjusted_rand(labels, best["lowest_loss"]) >= np.mean(aris)
    good = models[best["reference"]]
    assert good.loss_curve_[-1] < 0.5 * good.loss_curve_[0]  # the clustering loss fell
    assert np.array_equal(good.predict(images), good.labels_)
    assert good.outputs_.shape == (90, 3) and np.allclose(np.linalg.norm(good.outputs_, axis=1), 1, atol=1e-5)


def test_rotation_epochs_alternate_with_clustering_epochs():
    from deepclust.methods.mmdc import MMDC

    images, _ = _bars(10)
    model = MMDC(n_clusters=3, backbone="conv4", epochs=4, batch_size=10, random_state=0).fit(images)
    assert len(model.loss_curve_) == 2 and model.labels_.shape == (30,)
    with pytest.raises(DeepclustError, match="n_clusters=40 must be <= the number of images .30."):
        MMDC(n_clusters=40, backbone="conv4", epochs=1).fit(images)


def test_augment_is_seeded_and_the_identity_at_full_scale_without_jitter():
    from deepclust.methods.mmdc import augment

    images = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    same = augment(images, torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, jitter=0.0)
    assert torch.allclose(same, images, atol=1e-5)
    flipped = augment(images, torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True, jitter=0.0)
    as_is = [torch.allclose(f, x, atol=1e-5) for f, x in zip(flipped, images)]
    mirrored = [torch.allclose(f, x.flip(-1), atol=1e-5) for f, x in zip(flipped, images)]
    assert all(a or m for a, m in zip(as_is, mirrored)) and any(mirrored) and any(as_is)
    a = augment(images, torch.Generator().manual_seed(2))
    b = augment(images, torch.Generator().manual_seed(2))
    c = augment(images, torch.Generator().manual_seed(3))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # a crop of a quarter of the area magnifies: a centred 2-pixel dot becomes about 4 pixels wide
    dot = torch.zeros(1, 1, 16, 16)
    dot[..., 7:9, 7:9] = 1
    zoomed = augment(dot, torch.Generator().manual_seed(0), scale=(0.25, 0.25), ratio=(1.0, 1.0), flip=False, jitter=0.0)
    assert (zoomed > 0.5).sum() >= 9


def test_refinement_targets_follow_kmeans_clusters_of_any_size():
    from deepclust.methods.mmdc import MMDC

    rng = np.random.default_rng(0)
    sizes, means = [50, 10, 25], [2, 0, 1]  # unequal clusters lying near the one-hot means e2, e0, e1
    outputs = np.concatenate([np.eye(3)[m] + 0.05 * rng.standard_normal((s, 3)) for s, m in zip(sizes, means)])
    outputs = torch.nn.functional.normalize(torch.tensor(outputs, dtype=torch.float32), dim=1)
    targets = MMDC(n_clusters=3, random_state=0)._refinement_targets(outputs, epoch=0)
    expected = np.repeat(means, sizes)
    assert torch.equal(targets, torch.eye(3)[expected])


def test_mmdc_resumes_bit_for_bit_and_refuses_other_settings_or_data(tmp_path):
    from deepclust.methods.mmdc import MMDC

    images, labels = _bars(8)
    kw = dict(backbone="conv4", sobel=True, rotation_task=True, batch_size=12, random_state=0)
    whole = MMDC(n_clusters=3, epochs=3, refine_epochs=1, **kw).fit(images)
    MMDC(n_clusters=3, epochs=2, checkpoint_dir=str(tmp_path), **kw).fit(images)  # "interrupted" after 2 epochs
    resumed = MMDC(n_clusters=3, epochs=3, refine_epochs=1, checkpoint_dir=str(tmp_path), **kw).fit(images)
    assert [h["stage"] for h in resumed.history_] == ["cluster", "rotation", "cluster", "refine"]
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in whole.history_]
    assert np.array_equal(resumed.outputs_, whole.outputs_) and resumed.loss_ == whole.loss_
    assert np.array_equal(resumed.labels_main_, whole.labels_main_)
    again = MMDC(n_clusters=3, epochs=3, refine_epochs=1, checkpoint_dir=str(tmp_path), **kw).fit(images)
    assert len(again.history_) == 4 and np.array_equal(again.outputs_, whole.outputs_)  # finished: loaded only
    with pytest.raises(DeepclustError, match=r"other settings \(repetitions: 3 -> 2\)"):
        MMDC(n_clusters=3, epochs=3, checkpoint_dir=str(tmp_path), **{**kw, "repetitions": 2}).fit(images)
    with pytest.raises(DeepclustError, match="trained on other images"):
        MMDC(n_clusters=3, epochs=3, checkpoint_dir=str(tmp_path), **kw).fit(images[::-1])
    with pytest.raises(DeepclustError, match="has 4 epochs, more than the 2"):
        MMDC(n_clusters=3, epochs=2, checkpoint_dir=str(tmp_path), **kw).fit(images)


@pytest.mark.parametrize("name, value, message", [
    ("repetitions", 0, "repetitions=0 must be an integer >= 1"),
    ("lr", -0.1, "lr=-0.1 must be"),
    ("sigma", 0.0, "sigma=0.0 must be a positive number"),
    ("crop_scale", (0.9, 0.5), r"crop_scale=\(0.9, 0.5\) must be two numbers"),
])
def test_mmdc_rejects_bad_settings_before_training(name, value, message):
    from deepclust.methods.mmdc import MMDC

    with pytest.raises(DeepclustError, match=message):
        MMDC(n_clusters=3, backbone="conv4", **{name: value}).fit(np.zeros((5, 1, 8, 8), np.float32))
    with pytest.raises(DeepclustError, match=r"values must lie in \[0, 1\]"):
        MMDC(n_clusters=3, backbone="conv4").fit(np.full((5, 1, 8, 8), 3.0, np.float32))


def test_lowest_loss_and_majority_ensembles():
    from deepclust.methods.mmdc import combine_runs

    truth = np.repeat([0, 1, 2], 10)
    renamed = np.array([2, 0, 1])[truth]
    noisy = truth.copy()
    noisy[:4] = 1
    result = combine_runs([noisy, renamed, truth], losses=[0.5, 0.2, 0.3], n_clusters=3)
    assert result["reference"] == 1 and np.array_equal(result["lowest_loss"], renamed)
    assert np.array_equal(result["majority"], renamed)  # two of three runs agree everywhere: the noise is outvoted
    with pytest.raises(DeepclustError, match="one loss per run"):
        combine_runs([truth], losses=[0.1, 0.2], n_clusters=3)


def test_cifar_resnet_loads_the_shipped_checkpoint_and_classifies_cifar_jpegs():
    import timm
    from PIL import Image

    from deepclust.features.backbones import create_backbone, load_weights

    weights = SHARED / "weights" / "cifar-resnet" / "resnet20-12fca82f.th"
    backbone = create_backbone("cifar_resnet20", weights=str(weights))  # checkpoint without step counters
    assert backbone.num_features == 64 and backbone.image_size == 32
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "classifier": None}  # keep the classifier this time
    load_weights(model, str(weights), "cifar_resnet20")
    root = SHARED / "data" / "cifar10-test"
    classes = sorted(p.name for p in root.iterdir())
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).glob("*.jpg"))[:20]:
            xs.append(np.asarray(Image.open(f).convert("RGB"), np.float32) / 255)
            ys.append(c)
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2)
    mean = torch.tensor(backbone.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.data_config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        accuracy = (model((x - mean) / std).argmax(1).numpy() == np.array(ys)).mean()
    assert accuracy > 0.7  # 91.8% on the original test set; lossy JPEGs cost some
    with torch.no_grad():  # the backbone is the same network without its classifier
        assert torch.allclose(backbone((x[:4] - mean) / std), model.forward_head(model.forward_features((x[:4] - mean) / std), pre_logits=True))


def test_paper_learning_rates_and_a_resnet_trunk_on_sobel_input():
    from deepclust.methods.mmdc import MMDC, default_lr

    assert default_lr("mmdc_vgg3") == 0.05 and default_lr("cifar_resnet20") == 0.01 and default_lr("resnet34") == 0.01
    images = np.random.default_rng(0).random((12, 3, 32, 32), dtype=np.float32)
    model = MMDC(n_clusters=3, backbone="cifar_resnet20", epochs=2, batch_size=6, random_state=0).fit(images)
    assert model._lr() == 0.01 and model.net_.trunk.conv1.in_channels == 2  # Sobel: two gradient channels
    assert [h["stage"] for h in model.history_] == ["cluster", "rotation"] and model.outputs_.shape == (12, 3)
    with pytest.raises(DeepclustError, match="unknown backbone 'vgg-ish'"):
        MMDC(n_clusters=3, backbone="vgg-ish").fit(images)


@pytest.mark.ddp
def test_two_gloo_processes_keep_the_targets_in_step_and_end_with_identical_weights(tmp_path):
    """MMDC under torchrun: both heads (clustering and rotation epochs) train through DDP,
    every rank holds the same image-to-target map, rank 0 writes the checkpoint."""
    import os
    import subprocess
    import sys

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_mmdc import _bars\n"
        "from deepclust.methods.mmdc import MMDC\n"
        "images, _ = _bars(10)\n"
        "m = MMDC(n_clusters=3, backbone='conv4', epochs=3, refine_epochs=1, batch_size=12, random_state=0,\n"
        "         checkpoint_dir=sys.argv[1] + '/ckpt').fit(images)\n"
        "rank = dist.get_rank()\n"
        "torch.save({'net': m.net_.state_dict(), 'labels': torch.as_tensor(m.labels_), 'owner': torch.as_tensor(m.owner_)},\n"
        "           f'{sys.argv[1]}/rank{rank}.pt')\n"
        "dist.destroy_process_group()\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(worker), str(tmp_path), os.path.dirname(__file__)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["net"].items():
        assert torch.equal(value, rank1["net"][key]), key
    assert torch.equal(rank0["labels"], rank1["labels"])
    assert torch.equal(rank0["owner"], rank1["owner"])  # the Hungarian reassignments of both shares reached both
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    assert [h["stage"] for h in state["history"]] == ["cluster", "rotation", "cluster", "refine"]
    assert sorted(state["owner"].tolist()) == list(range(30))  # still one target per image
    for key, value in state["net"].items():  # rank 0's final weights are the checkpoint's
        assert torch.equal(value, rank0["net"][key]), key

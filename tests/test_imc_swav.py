"""IMC-SwAV: Sinkhorn-Knopp, the swapped prediction, the multi-view information objective,
multi-crop, the network, training, resume and settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepclust.errors import DeepclustError
from deepclust.losses import information_loss, multi_view_information_loss, sinkhorn, swapped_prediction_loss
from test_mmdc import _bars


def test_sinkhorn_rows_sum_to_one_and_columns_share_the_batch_equally():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(64, 128), dim=1) @ torch.nn.functional.normalize(
        torch.randn(16, 128), dim=1).t()
    scores[:, 3] += 0.5  # one prototype attracts everyone: equipartition must undo it
    q = sinkhorn(scores, n_iters=3, epsilon=0.05)
    assert q.shape == (64, 16) and (q >= 0).all()
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)
    plain = torch.softmax(scores / 0.05, dim=1)
    spread = lambda m: float((m.sum(0) - 64 / 16).abs().max())  # noqa: E731
    assert spread(q) < 0.25 * spread(plain)  # 3 iterations already balance the prototypes
    converged = sinkhorn(scores, n_iters=200, epsilon=0.05)
    assert torch.allclose(converged.sum(1), torch.ones(64), atol=1e-5)
    assert torch.allclose(converged.sum(0), torch.full((16,), 64 / 16), atol=1e-3)


def test_sinkhorn_keeps_a_balanced_hard_assignment_and_survives_large_scores():
    truth = torch.arange(12) % 4
    scores = torch.full((12, 4), -1.0)
    scores[torch.arange(12), truth] = 1.0
    q = sinkhorn(scores * 1000, n_iters=3, epsilon=0.05)  # exp(20000) would overflow without the shift
    assert torch.isfinite(q).all()
    assert torch.equal(q.argmax(1), truth) and torch.allclose(q.max(1).values, torch.ones(12), atol=1e-4)
    with pytest.raises(ValueError, match="epsilon > 0"):
        sinkhorn(scores, epsilon=0.0)


def test_swapped_prediction_uses_codes_of_the_first_views_only():
    torch.manual_seed(1)
    views = [torch.randn(8, 5, requires_grad=True) for _ in range(4)]
    loss = swapped_prediction_loss(views, n_assign=2, temperature=0.1)
    q0, q1 = sinkhorn(views[0].detach()), sinkhorn(views[1].detach())
    logp = [torch.log_softmax(v / 0.1, dim=1) for v in views]
    pairs = [(q0, 1), (q0, 2), (q0, 3), (q1, 0), (q1, 2), (q1, 3)]
    expected = torch.stack([-(q * logp[v]).sum(1).mean() for q, v in pairs]).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)


def _one_hot(indices, k):
    return torch.nn.functional.one_hot(torch.as_tensor(indices), k).float()


def test_information_loss_is_lowest_for_confident_balanced_consistent_predictions():
    k, kp, m, beta = 4, 8, 64, 4.0
    proto = torch.arange(m) % kp  # every prototype used equally
    u = _one_hot(proto, kp)
    cluster_of_proto = torch.arange(kp) % k  # each cluster owns two prototypes
    confident = _one_hot(cluster_of_proto[proto], k)
    best = information_loss(confident, u, beta)
    assert math.isclose(float(best), -beta * math.log(k), abs_tol=1e-4)  # the minimum: H(Y|U) = 0, H(Y) = log k
    collapsed = information_loss(_one_hot(torch.zeros(m, dtype=torch.long), k), u, beta)
    uniform = information_loss(torch.full((m, k), 1 / k), u, beta)
    unbalanced = information_loss(_one_hot((cluster_of_proto[proto] > 0).long(), k), u, beta)
    assert math.isclose(float(collapsed), 0.0, abs_tol=1e-5)  # one cluster: no information, no entropy
    assert float(best) < float(unbalanced) < float(collapsed)
    assert float(best) < float(uniform)  # hedging between clusters costs H(Y|U) = log k
    # across views: predictions that follow the other view's codes beat shuffled ones
    shuffled = confident[torch.randperm(m, generator=torch.Generator().manual_seed(0))]
    consistent = multi_view_information_loss([confident, confident], [u, u], beta)
    inconsistent = multi_view_information_loss([confident, shuffled], [u, u], beta)
    assert float(consistent) < float(inconsistent)


def test_information_loss_gradient_sharpens_predictions_that_follow_the_codes():
    k, kp, m = 3, 6, 60
    u = _one_hot(torch.arange(m) % kp, kp)
    target = (torch.arange(m) % kp) % k
    logits = (0.3 * _one_hot(target, k)).requires_grad_(True)
    loss = information_loss(torch.softmax(logits, dim=1), u, beta=4.0)
    loss.backward()
    step = (logits - 1.0 * logits.grad).detach()
    assert float(information_loss(torch.softmax(step, dim=1), u, 4.0)) < float(loss.detach())
    # the step raises the right logit of every image
    assert ((step - logits).gather(1, target[:, None]) > 0).all()


def test_multi_crop_yields_the_configured_views_reproducibly():
    from deepclust.data.transforms import multi_crop

    images = torch.rand(5, 3, 32, 32)
    crops = ((2, 28, (0.2, 1.0)), (4, 18, (0.08, 0.4)))
    views = multi_crop(images, torch.Generator().manual_seed(0), crops, grey_prob=0.5)
    assert [tuple(v.shape) for v in views] == [(5, 3, 28, 28)] * 2 + [(5, 3, 18, 18)] * 4
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for v in views)
    again = multi_crop(images, torch.Generator().manual_seed(0), crops, grey_prob=0.5)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[0], views[1])  # two independent high-resolution views
    grey = multi_crop(images, torch.Generator().manual_seed(0), ((1, 16, (1.0, 1.0)),), grey_prob=1.0)[0]
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])


def _tiny(**kw):
    from deepclust.methods.imc_swav import IMCSwAV

    params = dict(backbone="cifar_resnet20", backbone_kwargs={"widths": [8, 16, 32]}, n_prototypes=30, proj_hidden=64,
                  proj_dim=32, cls_hidden=32, batch_size=45, flip=False, warmup_steps=4, lr=0.005, random_state=0)
    params.update(kw)
    return IMCSwAV(3, **params)


def test_the_network_groups_views_by_size_and_one_step_lowers_the_loss_on_a_fixed_batch():
    from deepclust.data.transforms import multi_crop
    from deepclust.methods.imc_swav import imc_swav_loss

    torch.manual_seed(0)
    net = _tiny()._build(1)
    images, _ = _bars(10)
    views = [(v - 0.5) / 0.5 for v in multi_crop(torch.from_numpy(images), torch.Generator().manual_seed(0),
                                                 ((2, 14, (0.2, 1.0)), (2, 9, (0.08, 0.4))), flip=False)]
    scores, logits = net(views)
    assert [tuple(s.shape) for s in scores] == [(30, 30)] * 4 and [tuple(lg.shape) for lg in logits] == [(30, 3)] * 4
    assert torch.allclose(net.prototypes.weight.norm(dim=1), torch.ones(30))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before, _, _ = imc_swav_loss(scores, logits, n_assign=2)
    optimizer.zero_grad()
    before.backward()
    assert net.trunk.conv1.weight.grad.abs().sum() > 0 and net.classifier[0].weight.grad.abs().sum() > 0
    optimizer.step()
    after, _, _ = imc_swav_loss(*net(views), n_assign=2)
    assert float(after.detach()) < float(before.detach())


def test_a_short_run_learns_a_tiny_well_separated_set():
    images, labels = _bars(30)
    model = _tiny(epochs=60).fit(images, labels)  # labels only score the epochs
    acc = [h["ACC"] for h in model.history_]
    assert len(acc) == 60 and np.mean(acc[:5]) < 0.6
    assert np.mean(acc[-5:]) >= 0.9
    assert model.labels_.shape == (90,) and model.outputs_.shape == (90, 32)
    assert np.allclose(np.linalg.norm(model.outputs_, axis=1), 1, atol=1e-5)
    assert np.array_equal(model.predict(images), model.labels_)
    assert model.history_[-1]["swav"] < model.history_[0]["swav"] and model.history_[-1]["mi"] < model.history_[0]["mi"]


def test_imc_swav_resumes_bit_for_bit_and_refuses_other_settings_or_data(tmp_path):
    images, labels = _bars(6)
    whole = _tiny(epochs=3, checkpoint_dir=str(tmp_path / "whole")).fit(images)
    _tiny(epochs=2, checkpoint_dir=str(tmp_path / "cut")).fit(images)
    resumed = _tiny(epochs=3, checkpoint_dir=str(tmp_path / "cut")).fit(images)
    for key, value in whole.net_.state_dict().items():
        assert torch.equal(value, resumed.net_.state_dict()[key]), key
    assert [h["loss"] for h in whole.history_] == [h["loss"] for h in resumed.history_]
    with pytest.raises(DeepclustError, match=r"other settings \(beta: 4.0 -> "):
        _tiny(epochs=3, beta=2.0, checkpoint_dir=str(tmp_path / "cut")).fit(images)
    with pytest.raises(DeepclustError, match="trained on other images"):
        _tiny(epochs=3, checkpoint_dir=str(tmp_path / "cut")).fit(images[::-1].copy())
    with pytest.raises(DeepclustError, match="has 3 epochs, more than the 2 asked for"):
        _tiny(epochs=2, checkpoint_dir=str(tmp_path / "cut")).fit(images)


@pytest.mark.parametrize("changes, message", [
    (dict(backbone="no_such_net"), "unknown backbone 'no_such_net'"),
    (dict(crops=[[0, 14, [0.2, 1.0]], [2, 9, [0.1, 0.4]]]), "needs at least one high-resolution view"),
    (dict(crops=[[2, 14, [0.5, 0.2]]]), r"must be \[count >= 0, size >= 8, \[low, high\]\]"),
    (dict(grey_prob=1.5), r"grey_prob=1.5 must be a number in \[0.0, 1.0\]"),
    (dict(temperature=0.0), "temperature=0.0 must be a positive number"),
    (dict(milestones=[0]), "milestones=.0. must be a list of epochs >= 1"),
])
def test_imc_swav_rejects_bad_settings_before_training(changes, message):
    images, _ = _bars(2)
    with pytest.raises(DeepclustError, match=message):
        _tiny(epochs=1, **changes).fit(images)


def test_default_crops_follow_the_paper_for_32_pixels():
    from deepclust.methods.imc_swav import default_crops

    assert default_crops(32) == [[2, 28, [0.2, 1.0]], [4, 18, [0.08, 0.4]]]
    assert default_crops(96)[0][1] == 84 and default_crops(96)[1][1] == 54


def test_cifar_resnet18_keeps_small_images_large_until_the_last_stage():
    import timm

    import deepclust.features.networks  # noqa: F401

    net = timm.create_model("cifar_resnet18", num_classes=0, in_chans=1)
    assert net.num_features == 512
    assert tuple(net.forward_features(torch.zeros(1, 1, 32, 32)).shape) == (1, 512, 4, 4)

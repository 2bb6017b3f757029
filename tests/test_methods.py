"""Fine-tuning methods: one step lowers the loss, selection, checkpoints, resume, checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from deepclust.features.backbones import create_backbone
from deepclust.config import TrainConfig
from deepclust.data import find_images, load_split
from deepclust.data.transforms import eval_transform
from deepclust.errors import DeepclustError
from deepclust.methods import create_method, list_methods
from deepclust.methods.finetune.base import LabelledImages, TrainNet, feature_layers, is_sequential


def tiny_config(moth_split, out, **changes) -> TrainConfig:
    images, split = moth_split
    values = dict(images=str(images), split=str(split), out=str(out), backbone="test_efficientnet", weights="random",
                  image_size=32, n_way=3, n_shot=2, n_query=2, n_tasks=4, epochs=2, batch_size=16,
                  classic_images_per_epoch=32, progress=False)
    values.update(changes)
    return TrainConfig(**values)


def state_of(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["net"]


@pytest.mark.parametrize("method, alpha", [("episodic", 0.0), ("episodic", 0.5), ("episodic", 1.0), ("classic", 0.0)])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(moth_split, tmp_path, method, alpha):
    config = tiny_config(moth_split, tmp_path, method=method, alpha=alpha, lr=1e-3)
    trainer = create_method(method, config)
    images, split = moth_split
    train_classes = load_split(split).classes("train")
    data = LabelledImages(find_images(images, classes=train_classes), train_classes)
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32)
    layers, _ = feature_layers(backbone.model)
    net = TrainNet(backbone.model, layers, 0, trainer.make_head(len(train_classes), backbone.num_features)).train()
    batch = next(iter(trainer.epoch_batches(data.labels, 1, np.random.default_rng(0))))
    x = data.batch(batch, eval_transform(backbone.data_config))
    y = torch.as_tensor(data.labels[batch])
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    before, parts = trainer.batch_loss(*net(x), y)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = trainer.batch_loss(*net(x), y)
    assert after.item() < before.item()
    if method == "episodic":
        assert before.item() == pytest.approx(alpha * parts["Lm"] + (1 - alpha) * parts["Lc"], rel=1e-5)


def test_fit_keeps_the_epoch_with_the_best_validation_accuracy_as_a_loadable_checkpoint(moth_split, tmp_path):
    trainer = create_method("episodic", tiny_config(moth_split, tmp_path / "run", epochs=3, lr=0.05))
    backbone = trainer.fit()
    epochs = [row["epoch"] for row in trainer.history_]
    assert epochs == [0, 1, 2, 3]
    cas = [row["val_CA"] for row in trainer.history_[1:]]
    assert trainer.best_epoch_ == 1 + int(np.argmax(cas)) and trainer.best_score_ == max(cas)
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == trainer.best_epoch_ and best["config"]["alpha"] == 0.0 and best["method"] == "episodic"
    assert backbone.weights.startswith("file:")
    for name in ("last.pt", "history.csv", "train_summary.json", "train_config.yaml", "skipped.csv"):
        assert (tmp_path / "run" / name).is_file()
    # training moved the weights away from the seeded initial ones
    torch.manual_seed(0)
    initial = create_backbone("test_efficientnet", weights="random", image_size=32)
    moved = [not torch.equal(a, b) for a, b in zip(initial.model.state_dict().values(), backbone.model.state_dict().values())]
    assert any(moved)


@pytest.mark.parametrize("cached", [False, True])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(moth_split, tmp_path, cached):
    extra = dict(trainable_stages=2, cache_views=2) if cached else {}
    create_method("episodic", tiny_config(moth_split, tmp_path / "straight", epochs=2, alpha=0.3, **extra)).fit()
    create_method("episodic", tiny_config(moth_split, tmp_path / "resumed", epochs=1, alpha=0.3, **extra)).fit()
    first = state_of(tmp_path / "resumed" / "last.pt")
    resumed = create_method("episodic", tiny_config(moth_split, tmp_path / "resumed", epochs=2, alpha=0.3, **extra))
    resumed.fit()
    straight, again = state_of(tmp_path / "straight" / "last.pt"), state_of(tmp_path / "resumed" / "last.pt")
    assert any(not torch.equal(first[k], again[k]) for k in first)  # the second epoch did train
    for key in straight:
        assert torch.equal(straight[key], again[key]), key
    assert [row["epoch"] for row in resumed.history_] == [0, 1, 2]


def test_resuming_with_other_settings_is_refused(moth_split, tmp_path):
    create_method("episodic", tiny_config(moth_split, tmp_path, epochs=1)).fit()
    with pytest.raises(DeepclustError, match=r"other settings \(alpha: 0.0 -> 0.5\); resume with the same settings, or use another --out"):
        create_method("episodic", tiny_config(moth_split, tmp_path, epochs=1, alpha=0.5)).fit()


@pytest.mark.parametrize("changes, message", [
    (dict(n_way=5), r"5-way tasks .* need 5 classes .* the data has 4 such classes"),
    (dict(cache_views=2), "cache_views needs a frozen part; set trainable_stages"),
    (dict(trainable_stages=9), "trainable_stages=9 but test_efficientnet has 5 stages"),
    (dict(alpha=1.5), r"alpha=1.5 must be a number in \[0.0, 1.0\]"),
    (dict(milestones=[0]), "milestones=.0. must be a list of epochs >= 1"),
    (dict(split=""), "training needs a class split"),
    (dict(backbone="test_vit", trainable_stages=1, cache_views=1), "test_vit does not .e.g. a ViT.; set cache_views: 0"),
])
def test_bad_settings_fail_before_training_with_a_clear_message(moth_split, tmp_path, changes, message):
    with pytest.raises(DeepclustError, match=message):
        create_method("episodic", tiny_config(moth_split, tmp_path, **changes)).fit()
    assert not (tmp_path / "last.pt").exists()


def test_unknown_method_lists_the_known_ones():
    assert list_methods() == ["c2m", "classic", "episodic", "imc_swav", "linear", "mmdc"]
    with pytest.raises(DeepclustError, match="choose one of: c2m, classic, episodic, imc_swav, linear, mmdc"):
        create_method("maml", TrainConfig())


@pytest.mark.parametrize("name, sequential", [("test_efficientnet", True), ("test_resnet", True), ("resnet18", True),
                                              ("test_convnext", True), ("conv4", True), ("test_vit", False)])
def test_feature_layers_reproduce_forward_features_for_cnns_only(name, sequential):
    torch.manual_seed(0)
    backbone = create_backbone(name, weights="random", image_size=32)
    layers, stages = feature_layers(backbone.model)
    assert len(stages) >= 1 and all(0 <= s < len(layers) for s in stages)
    assert is_sequential(backbone.model, layers, 32) is sequential


def test_frozen_prefix_is_not_trained_and_keeps_its_batchnorm_statistics(moth_split, tmp_path):
    trainer = create_method("episodic", tiny_config(moth_split, tmp_path, trainable_stages=1, epochs=1, lr=0.05))
    trainer.fit()
    torch.manual_seed(0)
    initial = create_backbone("test_efficientnet", weights="random", image_size=32).model.state_dict()
    trained = trainer.net_.model.state_dict()
    layers, stages = feature_layers(trainer.net_.model)
    frozen_names = {n for n, m in trainer.net_.model.named_modules() if any(m is layer for layer in layers[: stages[-1]])}
    frozen_keys = [k for k in trained if any(k.startswith(n + ".") for n in frozen_names)]
    assert frozen_keys
    assert all(torch.equal(initial[k], trained[k]) for k in frozen_keys)  # weights and running stats
    assert any(not torch.equal(initial[k], trained[k]) for k in trained if k not in frozen_keys)


def test_conv4_is_a_timm_model_with_no_pretrained_weights():
    import timm

    assert timm.is_model("conv4")
    backbone = create_backbone("conv4", weights="random")
    assert backbone.image_size == 28 and backbone.num_features == 64
    assert backbone(torch.zeros(2, 3, 28, 28)).shape == (2, 64)
    with pytest.raises(DeepclustError, match="could not get pretrained weights for 'conv4'"):
        create_backbone("conv4")


def test_train_config_round_trips_through_yaml(tmp_path):
    from deepclust.config import build_config, write_config

    config = TrainConfig(method="classic", alpha=0.2, milestones=[2, 4], scale=[0.5, 1.0])
    write_config(tmp_path / "c.yaml", config)
    assert dataclasses.asdict(build_config(TrainConfig, tmp_path / "c.yaml")) == dataclasses.asdict(config)


@pytest.mark.slow
@pytest.mark.parametrize("paper_name, n_stages, sequential", [
    ("ResNet50v2", 4, True), ("EfficientNet-B3", 7, True), ("ConvNeXt-B", 4, True), ("ViT-B/16", 12, False),
])
def test_the_papers_four_backbones_can_be_frozen_by_stage(paper_name, n_stages, sequential):
    backbone = create_backbone(paper_name, weights="random", image_size=64 if sequential else 224)
    layers, stages = feature_layers(backbone.model)
    assert len(stages) == n_stages
    assert is_sequential(backbone.model, layers, backbone.image_size) is sequential

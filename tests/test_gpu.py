"""Every CUDA path, for the day a GPU is at hand: `make test-gpu` (pytest -m gpu).

Skipped where ``torch.cuda.is_available()`` is false (``make test-gpu`` then lists what it would
run). On a GPU machine ``scripts/gpu_check.sh`` installs deepclust against that machine's
PyTorch and runs this file plus ``benchmarks/gpu_throughput.py``; the images come from
``DEEPCLUST_SHARED`` (``scripts/prepare_gpu_check.sh`` copies a small subset there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MOTHS, needs_moths
from deepclust.cli import main

#: The device under test; DEEPCLUST_GPU_TEST_DEVICE=cpu runs the same checks on a CPU (to check the checks).
DEVICE = os.environ.get("DEEPCLUST_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                 reason="no CUDA device (torch.cuda.is_available())")]


def _bars(n):
    from test_mmdc import _bars as bars

    return bars(n)


@needs_moths
def test_cluster_on_cuda_gives_the_cpu_metrics_and_says_how_much_faster_it_embeds(tmp_path, capsys):
    seconds = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / device
        assert main(["-q", "cluster", str(MOTHS / "images"), "--split", "eu-moths", "--subset", "test", "--labels",
                     "folders", "--device", device, "--out", str(out), "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        seconds[device] = summary["timings_seconds"]["embed"]
    cpu = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    cuda = json.loads((tmp_path / DEVICE / "metrics.json").read_text())
    for metric in ("CA", "ACC", "NMI", "AMI", "ARI"):
        assert round(cpu[metric], 3) == round(cuda[metric], 3), metric
    cpu_vectors = np.load(tmp_path / "cpu" / "embeddings.npy")
    cuda_vectors = np.load(tmp_path / DEVICE / "embeddings.npy")
    assert np.abs(cpu_vectors - cuda_vectors).max() < 1e-3 * np.abs(cpu_vectors).max()
    print(f"\nembedding {cpu['n_images']} images: CPU {seconds['cpu']:.1f} s, {DEVICE} {seconds[DEVICE]:.1f} s "
          f"({seconds['cpu'] / seconds[DEVICE]:.1f}x)")


@needs_moths
@pytest.mark.parametrize("method", ["episodic", "classic", "linear"])
def test_the_core_methods_train_on_cuda_and_resume(moth_split, tmp_path, capsys, method):
    images, split = moth_split
    args = ["-q", "train", "--method", method, "--images", str(images), "--split", str(split), "--device", DEVICE,
            "--image-size", "64", "--out", str(tmp_path / "t"), "--no-progress"]
    if method != "linear":
        args += ["--epochs", "2", "--n-way", "3", "--n-tasks", "4", "--trainable-stages", "1", "--cache-views", "2"]
    assert main(args) == 0
    history = json.loads((tmp_path / "t" / "train_summary.json").read_text())["history"]
    if method != "linear":
        assert all(np.isfinite(row["val_CA"]) for row in history) and (tmp_path / "t" / "last.pt").is_file()
        assert main(args + ["--epochs", "3"]) == 0  # resumes after epoch 2
        again = json.loads((tmp_path / "t" / "train_summary.json").read_text())["history"]
        assert again[: len(history)] == history and again[-1]["epoch"] == 3
    assert (tmp_path / "t" / "best.pt").is_file()


def test_mmdc_and_imc_swav_train_on_cuda_and_resume_exactly(tmp_path):
    from deepclust.methods.imc_swav import IMCSwAV
    from deepclust.methods.mmdc import MMDC

    images, _ = _bars(8)
    kw = dict(backbone="conv4", sobel=True, rotation_task=True, batch_size=12, random_state=0, device=DEVICE)
    whole = MMDC(n_clusters=3, epochs=3, **kw).fit(images)
    MMDC(n_clusters=3, epochs=2, checkpoint_dir=str(tmp_path / "m"), **kw).fit(images)
    resumed = MMDC(n_clusters=3, epochs=3, checkpoint_dir=str(tmp_path / "m"), **kw).fit(images)
    assert next(whole.net_.parameters()).device.type == DEVICE
    assert np.allclose([h["loss"] for h in resumed.history_], [h["loss"] for h in whole.history_], rtol=1e-4)
    tiny = dict(backbone="cifar_resnet20", backbone_kwargs={"widths": [8, 16, 32]}, n_prototypes=30, proj_hidden=64,
                proj_dim=32, cls_hidden=32, batch_size=45, flip=False, warmup_steps=4, lr=0.005, random_state=0,
                device=DEVICE)
    model = IMCSwAV(3, epochs=3, checkpoint_dir=str(tmp_path / "i"), **tiny).fit(images)
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]
    assert IMCSwAV(3, epochs=3, checkpoint_dir=str(tmp_path / "i"), **tiny).fit(images).history_ == model.history_


def test_kmeans_and_spectral_on_cuda_agree_with_the_cpu():
    from deepclust.cluster import KMeans, SpectralClustering
    from deepclust.metrics import adjusted_rand

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 1.0, (400, 32)) for c in rng.normal(0, 4, (10, 32))]).astype(np.float32)
    for make in (lambda d: KMeans(10, n_init=4, backend="torch", device=d, random_state=0),
                 lambda d: SpectralClustering(10, device=d, random_state=0)):
        cpu, cuda = make("cpu").fit_predict(X), make(DEVICE).fit_predict(X)
        assert adjusted_rand(cpu, cuda) > 0.99


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with NCCL needs 2 GPUs")
def test_two_nccl_processes_train_in_step(moth_split, tmp_path):
    images, split = moth_split
    torchrun = shutil.which("torchrun") or f"{sys.executable} -m torch.distributed.run"
    command = (f"{torchrun} --nproc_per_node=2 -m deepclust train --images {images} --split {split} --device cuda "
               f"--image-size 64 --epochs 1 --n-way 3 --n-tasks 4 --out {tmp_path / 'ddp'} --no-progress")
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ddp" / "best.pt").is_file()

"""Embedding and training speed on CUDA, against the CPU in the same run.

    python benchmarks/gpu_throughput.py [--images N] [--cifar N]

Prints images/s for EfficientNet-Lite0 (224 px) and ResNet-50 embedding on CUDA and on the
CPU (a smaller sample there, the same batches), and the seconds of one MMDC and one IMC-SwAV
epoch on CIFAR-10 test JPEGs (``DEEPCLUST_SHARED``/data/cifar10-test) on CUDA. Exits 0 with a
note where no CUDA device exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("DEEPCLUST_SHARED", os.path.join(HERE, "..", "..", "shared"))


def images_per_second(name: str, device: str, n: int, batch: int = 64) -> float:
    from deepclust import create_backbone

    weights = "pretrained" if name == "tf_efficientnet_lite0" else "random"
    backbone = create_backbone(name, weights=weights, image_size=224).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, device=device)
    with torch.inference_mode():
        backbone(x)  # warm-up (cuDNN picks its kernels)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(max(1, n // batch)):
            backbone(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - t)


def epoch_seconds(method: str, n: int) -> float:
    from deepclust.data.datasets import load_pixels

    data = load_pixels(os.path.join(SHARED, "data", "cifar10-test"), image_size=32, channels=3, labels="folders",
                       progress=False)
    images = data.images[np.random.default_rng(0).permutation(len(data.images))[:n]]
    if method == "mmdc":
        from deepclust.methods.mmdc import MMDC

        model = MMDC(n_clusters=10, backbone="mmdc_vgg3", epochs=1, rotation_task=False, device="cuda", random_state=0)
    else:
        from deepclust.methods.imc_swav import IMCSwAV

        model = IMCSwAV(10, epochs=1, device="cuda", random_state=0)
    t = time.perf_counter()
    model.fit(images)
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048, help="images per CUDA measurement (CPU: an eighth)")
    parser.add_argument("--cifar", type=int, default=10000, help="CIFAR-10 images per training epoch")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run this where `python -c 'import torch; "
              "print(torch.cuda.is_available())'` prints True)")
        return 0
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for name in ("tf_efficientnet_lite0", "resnet50"):
        gpu = images_per_second(name, "cuda", args.images)
        cpu = images_per_second(name, "cpu", max(64, args.images // 8))
        print(f"{name:24s} CUDA {gpu:8.0f} img/s   CPU {cpu:6.1f} img/s   ({gpu / cpu:.0f}x)", flush=True)
    if os.path.isdir(os.path.join(SHARED, "data", "cifar10-test")):
        for method in ("mmdc", "imc_swav"):
            print(f"{method:24s} one epoch on {args.cifar} CIFAR-10 images: {epoch_seconds(method, args.cifar):.1f} s",
                  flush=True)
    else:
        print(f"no CIFAR-10 JPEGs under {SHARED}/data/cifar10-test: the epoch times are skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

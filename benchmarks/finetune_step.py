"""Seconds per episodic task of the fine-tuning loop, for the ways of running it on a CPU.

Measured in one run, on the same EU-moths images, with the default backbone (Lite0,
224 px) and one 20-way 5-shot 6-query task (220 images) per step:

* ``full``: every stage trains (the paper's setting);
* ``frozen``: only the last N stages train; images still pass through the frozen ones;
* ``cached``: only the last N stages train, on cached outputs of the frozen ones
  (``cache_views``); what remains per task is the trainable tail.

Decoding and augmentation are excluded (images are preprocessed once beforehand), so
the ratios are those of the network alone. Prints seconds per task and each mode's
speed-up over ``full``.

    python benchmarks/finetune_step.py --trainable-stages 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from deepclust.features.backbones import create_backbone
from deepclust.data import find_images, load_split
from deepclust.data.transforms import eval_transform
from deepclust.losses import prototypical_loss, scatter_loss
from deepclust.methods.finetune.base import LabelledImages, TrainNet, feature_layers


def step_seconds(net: TrainNet, x: torch.Tensor, from_prefix: bool, repeats: int, n_way=20, n_shot=5) -> float:
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    ys = torch.arange(n_way).repeat_interleave(n_shot)
    yq = torch.arange(n_way).repeat_interleave((len(x) - n_way * n_shot) // n_way)
    net.train()
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        feats, _ = net(x, from_prefix=from_prefix)
        s, q = feats[: n_way * n_shot], feats[n_way * n_shot:]
        loss = 0.1 * scatter_loss(s, ys) + 0.9 * prototypical_loss(s, ys, q, yq)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return float(np.min(times[1:]))


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join(here, "..", "..", "shared", "data", "eu-moths", "images"))
    parser.add_argument("--trainable-stages", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    classes = load_split("eu-moths").classes("train")[:20]
    data = LabelledImages(find_images(args.images, classes=classes), classes)
    backbone = create_backbone()
    order = np.concatenate([np.flatnonzero(data.labels == c)[:11] for c in range(20)])
    order = np.concatenate([order.reshape(20, 11)[:, :5].ravel(), order.reshape(20, 11)[:, 5:].ravel()])
    x = data.batch(order.tolist(), eval_transform(backbone.data_config))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one task = {len(x)} images at "
          f"{backbone.image_size} px")
    layers, stages = feature_layers(backbone.model)

    net = TrainNet(backbone.model, layers, 0, None)
    full = step_seconds(net, x, False, args.repeats)
    print(f"{'full (all stages train)':<34} {full:7.2f} s/task   1.00x")
    for n in args.trainable_stages:
        start = stages[-n]
        for layer in layers[:start]:
            layer.requires_grad_(False)
        net = TrainNet(backbone.model, layers, start, None)
        frozen = step_seconds(net, x, False, args.repeats)
        with torch.inference_mode():
            prefix = net.prefix(x.clone())
        cached = step_seconds(net, prefix.clone(), True, args.repeats)
        print(f"{f'frozen, last {n} stage(s) train':<34} {frozen:7.2f} s/task {full / frozen:6.2f}x")
        print(f"{f'cached, last {n} stage(s) train':<34} {cached:7.2f} s/task {full / cached:6.2f}x")
        for layer in layers:
            layer.requires_grad_(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

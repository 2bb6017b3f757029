"""CPU speed of each named backbone (``deepclust backbones``) relative to EfficientNet-Lite0.

Every short name of the catalog is built with random weights (speed does not depend on the
weights; no download), at its own input size, and run on the same batch of random images:
PyTorch eager forward, ``torch.set_num_threads(--threads)``, in alternating rounds (one
batch of every model per round, the order rotated each round) so that a slow spell of the
machine falls on all of them alike. Prints images per second (median of the rounds) and the
ratio to lite0's, the figure ``deepclust backbones`` shows.

    nice -n 10 python benchmarks/backbone_speed.py --batch 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepclust.features.backbones import create_backbone
from deepclust.features.catalog import CATALOG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--names", nargs="+", default=list(CATALOG))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["lite0"] + [n for n in args.names if n != "lite0"]
    models = {n: create_backbone(n, weights="random").eval() for n in names}
    batches = {n: torch.randn(args.batch, 3, m.image_size, m.image_size, generator=torch.Generator().manual_seed(0))
               for n, m in models.items()}
    rates: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:  # warm-up: first-call allocation and kernel choice
            models[n](batches[n][:2])
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                t = time.perf_counter()
                models[n](batches[n])
                rates[n].append(args.batch / (time.perf_counter() - t))
    base = statistics.median(rates["lite0"])
    print(f"batch {args.batch}, {args.rounds} alternating rounds, {args.threads} threads, PyTorch eager, random weights")
    print(f"{'name':<16} {'input':>5} {'features':>8} {'img/s':>8} {'vs lite0':>9}")
    for n in names:
        m = models[n]
        rate = statistics.median(rates[n])
        print(f"{n:<16} {m.image_size:>5} {m.num_features:>8} {rate:>8.2f} {rate / base:>8.3f}x")


if __name__ == "__main__":
    main()

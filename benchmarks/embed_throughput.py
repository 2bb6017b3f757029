"""Images per second of the whole extraction pipeline against the bare forward pass.

Both are measured in the same run on the same images and model:

* bare forward: images decoded and preprocessed beforehand into one tensor, then only
  ``backbone(batch)`` is timed;
* pipeline: :func:`deepclust.extract_embeddings` from the files (decode, convert,
  resize, normalise, forward), with no cache, for each ``--num-workers`` value.

The target is a pipeline rate of at least 80% of the bare forward rate.

    python benchmarks/embed_throughput.py --images ../shared/data/eu-moths/images --n 320
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from deepclust.backbones import create_backbone
from deepclust.data import find_images, load_image
from deepclust.embeddings import extract_embeddings


def bare_forward_rate(backbone, images: torch.Tensor, batch_size: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            backbone(images[i : i + batch_size])
        return len(images) / (time.perf_counter() - start)


def pipeline_rate(records, backbone, batch_size: int, num_workers: int) -> float:
    result = extract_embeddings(records, backbone, batch_size=batch_size, num_workers=num_workers, progress=False)
    return len(records) / result.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join("..", "shared", "data", "eu-moths", "images"))
    parser.add_argument("--n", type=int, default=320, help="number of images")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternating measurements; the best of each is kept")
    args = parser.parse_args(argv)

    records = find_images(args.images)[: args.n]
    backbone = create_backbone(args.backbone, image_size=args.image_size).eval()
    transform = backbone.transform()
    images = torch.stack([transform(load_image(r.path)) for r in records])
    print(f"{len(records)} images from {args.images}; {backbone.name} at {backbone.image_size} px; "
          f"batch {args.batch_size}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")

    with torch.inference_mode():
        backbone(images[: args.batch_size])  # warm-up
    # Alternate the measurements round by round so that drift of the machine's speed
    # affects both sides alike; keep the best round of each.
    bare, pipeline = 0.0, {w: 0.0 for w in args.num_workers}
    for _ in range(args.repeats):
        bare = max(bare, bare_forward_rate(backbone, images, args.batch_size))
        for workers in args.num_workers:
            pipeline[workers] = max(pipeline[workers], pipeline_rate(records, backbone, args.batch_size, workers))
    print(f"bare forward (pre-loaded tensors): {bare:8.1f} img/s   (reference)")
    for workers, rate in pipeline.items():
        ratio = rate / bare
        print(f"pipeline, num_workers={workers}:      {rate:8.1f} img/s   ratio {ratio:.2f} "
              f"{'OK' if ratio >= 0.8 else 'BELOW 0.80'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Images per second of the whole extraction pipeline against the bare forward pass.

Both are measured in the same run on the same images and model:

* bare forward: images decoded and preprocessed beforehand into one tensor, then only
  ``backbone(batch)`` is timed;
* pipeline: :func:`deepclust.extract_embeddings` from the files (decode, convert,
  resize, normalise, forward), with no cache, for each ``--num-workers`` value.

The target is a pipeline rate of at least 80% of the bare forward rate.

``--flush-cost`` also measures what writing the cache as it goes costs (a kill then loses
at most the last unwritten shard): the pipeline with no cache, with the cache flushed as
by default (every 1,024 images or 60 s), and with a shard written after every batch (the
worst case, ``flush_seconds=0``), alternating rounds; each a ratio to no cache.

``--runtimes`` instead compares the bare forward pass of each runtime with PyTorch eager's on
the same pre-loaded images, batch 1 and ``--batch-size``, alternating rounds, for Lite0 (its
ImageNet weights) and, with ``--models``, any timm models (random weights: ResNet-50, a ViT-S),
with the smallest cosine between each runtime's features and eager's; then the whole pipeline
(decode to vectors) with each runtime, as a ratio to the runtime's own bare forward.

    python benchmarks/embed_throughput.py --images ../shared/data/eu-moths/images --n 320
    python benchmarks/embed_throughput.py --runtimes --n 128 --models tf_efficientnet_lite0 resnet50 vit_small_patch16_224
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

from deepclust.features.backbones import create_backbone
from deepclust.data import find_images, load_image
from deepclust.features.extract import EmbeddingStore, extract_embeddings


def bare_forward_rate(backbone, images: torch.Tensor, batch_size: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            backbone(images[i : i + batch_size])
        return len(images) / (time.perf_counter() - start)


def pipeline_rate(records, backbone, batch_size: int, num_workers: int, cache: str | None = None,
                  flush_seconds: float = 60.0) -> float:
    store = None
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)  # a fresh cache: every vector is computed and written
        store = EmbeddingStore(cache, backbone.signature())
    result = extract_embeddings(records, backbone, batch_size=batch_size, num_workers=num_workers, progress=False,
                                store=store, flush_seconds=flush_seconds)
    return len(records) / result.seconds


def runtimes(records, args) -> None:
    """Each CPU runtime installed (ONNX Runtime, OpenVINO) against PyTorch eager, alternating."""
    import importlib.util

    from deepclust.features.runtime import forward_for

    engines = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e)]
    for name in args.models:
        backbone = create_backbone(name, weights="pretrained" if name == "tf_efficientnet_lite0" else "random",
                                   image_size=args.image_size).eval()
        transform = backbone.transform()
        images = torch.stack([transform(load_image(r.path)) for r in records])
        forwards = {"torch": backbone, **{e: forward_for(backbone, e)[0] for e in engines}}
        with torch.inference_mode():
            want = backbone(images[:32])
        cosines = {e: float(torch.nn.functional.cosine_similarity(want, forwards[e](images[:32]), dim=1).min())
                   for e in engines}
        print(f"{name} at {backbone.image_size} px, {len(records)} images; min cosine to eager: "
              + ", ".join(f"{e} {c:.7f}" for e, c in cosines.items()))
        best = {}
        for batch in (1, args.batch_size):
            n = min(len(images), 32) if batch == 1 else len(images)
            best = {e: 0.0 for e in forwards}
            for _ in range(args.repeats):  # alternating rounds; the best of each
                for e, forward in forwards.items():
                    best[e] = max(best[e], bare_forward_rate(forward, images[:n], batch))
            print(f"  batch {batch:3d}: " + ", ".join(f"{e} {r:7.1f} img/s ({r / best['torch']:.1f}x)"
                                                   for e, r in best.items()))
        for e in engines:
            pipe = 0.0
            for _ in range(args.repeats):
                result = extract_embeddings(records, backbone, batch_size=args.batch_size, num_workers=0,
                                            progress=False, runtime=e)
                pipe = max(pipe, len(records) / result.seconds)
            print(f"  pipeline with {e} (decode to vectors): {pipe:7.1f} img/s, {pipe / best[e]:.2f} of its bare forward")


def flush_cost(records, backbone, batch_size: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        best = {"no cache": 0.0, "cache, default flushing": 0.0, "cache, a shard per batch": 0.0}
        for _ in range(repeats):
            best["no cache"] = max(best["no cache"], pipeline_rate(records, backbone, batch_size, 0))
            best["cache, default flushing"] = max(best["cache, default flushing"],
                                                  pipeline_rate(records, backbone, batch_size, 0, cache))
            best["cache, a shard per batch"] = max(best["cache, a shard per batch"],
                                                   pipeline_rate(records, backbone, batch_size, 0, cache, 0.0))
    for name, rate in best.items():
        print(f"{name + ':':28s} {rate:8.1f} img/s   ratio {rate / best['no cache']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join("..", "shared", "data", "eu-moths", "images"))
    parser.add_argument("--n", type=int, default=320, help="number of images")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternating measurements; the best of each is kept")
    parser.add_argument("--flush-cost", action="store_true", help="also measure what writing the cache costs")
    parser.add_argument("--runtimes", action="store_true", help="compare ONNX Runtime and OpenVINO (where installed) with PyTorch eager instead")
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0"], help="with --runtimes")
    args = parser.parse_args(argv)

    records = find_images(args.images)[: args.n]
    if args.runtimes:
        runtimes(records, args)
        return 0
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
    if args.flush_cost:
        flush_cost(records, backbone, args.batch_size, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

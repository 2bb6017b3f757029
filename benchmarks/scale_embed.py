"""`deepclust embed` on real images: this process against a 2-worker Dask cluster, the
per-image costs behind them, and what they predict for 5 million images on 8 GPUs.

Measured in one run, on --n EU-moths images (every few-th file, all species):

* decode + preprocess, one thread: seconds per image of PIL decoding, RGB conversion,
  resize and normalisation (the CPU work every image needs, GPU or not), for these
  256-px files and for a 12-MP JPEG (fully, and with --fast-decode);
* forward pass, one thread: seconds per image of the backbone on preprocessed batches;
* `deepclust embed` with no scheduler (this process, all its threads) and with
  --scheduler local[W] (W processes of one thread): images per second.

The estimate for 5,000,000 images on 8 GPUs takes the measured decode cost, the
forward rate of the backbone on one GPU from timm's published benchmark
(--gpu-rate, default: tf_efficientnet_lite0 at 224 px with AMP on an RTX 4090, 8,710
images/s, results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv of
pytorch-image-models) and --cores-per-gpu CPU cores that decode for each GPU.

    python benchmarks/scale_embed.py [--images ../shared/data/eu-moths/images] [--n 240]
                                     [--image-size 224] [--workers 2] [--cores-per-gpu 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=os.path.join(HERE, "..", "..", "shared", "data", "eu-moths", "images"))
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu-rate", type=float, default=8710.0, help="images/s of the backbone on one GPU")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--cores-per-gpu", type=int, default=8)
    parser.add_argument("--total", type=int, default=5_000_000)
    args = parser.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from deepclust.features.backbones import create_backbone
    from deepclust.data import find_images, load_image
    from deepclust.parallel.executors import open_executor
    from deepclust.features.extract import decode_size
    from deepclust.jobs.embed import embed_images

    everything = find_images(args.images)
    step = max(1, len(everything) // args.n)
    records = everything[::step][: args.n]
    backbone = create_backbone("tf_efficientnet_lite0", image_size=args.image_size)
    transform = backbone.transform()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    tensors = [transform(load_image(r.path)) for r in records[:60]]
    decode = (time.perf_counter() - t) / len(tensors)
    # a light-trap camera's photo is far larger than these 256-px files: time one of 4000 x 3000
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        photo = os.path.join(tmp, "photo.jpg")
        load_image(records[0].path).resize((4000, 3000)).save(photo, quality=90)
        transform(load_image(photo))
        t = time.perf_counter()
        for _ in range(5):
            transform(load_image(photo))
        decode_photo = (time.perf_counter() - t) / 5
        size = decode_size(backbone)
        t = time.perf_counter()
        for _ in range(5):
            transform(load_image(photo, size))
        decode_fast = (time.perf_counter() - t) / 5
        Image.open(photo).close()
    batch = torch.stack(tensors[:32])
    with torch.inference_mode():
        backbone.eval()(batch[:4])  # warm-up
        t = time.perf_counter()
        backbone(batch)
        forward = (time.perf_counter() - t) / len(batch)
    torch.set_num_threads(threads)
    print(f"{len(records)} EU-moths images at {args.image_size} px, Lite0; {os.cpu_count()} cores")
    print(f"one thread: decode + preprocess {decode * 1e3:.1f} ms/image (256-px files), "
          f"{decode_photo * 1e3:.0f} ms/image (12-MP JPEG; {decode_fast * 1e3:.0f} ms with --fast-decode), "
          f"forward {forward * 1e3:.1f} ms/image")

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        for i, r in enumerate(records):  # the chosen files only, as links
            os.makedirs(os.path.join(folder, r.folder), exist_ok=True)
            os.symlink(os.path.abspath(r.path), os.path.join(folder, r.folder, os.path.basename(r.path)))
        rates = {}
        for scheduler in (None, f"local[{args.workers}]"):
            with open_executor(scheduler) as executor:
                t = time.perf_counter()
                embed_images(folder, os.path.join(tmp, f"store-{scheduler}"), "tf_efficientnet_lite0",
                             image_size=args.image_size, executor=executor, partition_size=32, progress=False)
                rates[scheduler or "this process"] = len(records) / (time.perf_counter() - t)
    base = rates["this process"]
    for name, rate in rates.items():
        print(f"deepclust embed, {name}: {rate:.1f} images/s ({rate / base:.2f} x this process)")

    gpu_rate = args.gpus * args.gpu_rate
    print(f"\nestimate, {args.total:,} images on {args.gpus} GPUs ({args.gpu_rate:,.0f} images/s each) with "
          f"{args.cores_per_gpu} decoding cores per GPU:")
    for name, cost in (("256-px files", decode), ("12-MP photos", decode_photo),
                       ("12-MP photos, --fast-decode", decode_fast)):
        decode_rate = args.gpus * args.cores_per_gpu / cost
        rate = min(decode_rate, gpu_rate)
        print(f"  {name}: decoding {decode_rate:,.0f} images/s, forward {gpu_rate:,.0f} images/s -> "
              f"{'decode' if decode_rate < gpu_rate else 'GPU'}-bound, {args.total / rate / 60:,.1f} min "
              f"({args.total / rate / 3600:.2f} h), plus reading the files from storage")


if __name__ == "__main__":
    main()

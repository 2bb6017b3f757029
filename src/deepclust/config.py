"""Typed run configurations, loadable from YAML; every run writes its resolved config.

A configuration is a dataclass. It is filled, in increasing priority, from its
defaults, from a YAML file (``--config FILE``) and from command-line options.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from deepclust.errors import DeepclustError
from deepclust.io import atomic_write

#: The backbone used when none is named: EfficientNet-Lite0 with its offline ImageNet weights.
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: The methods whose network clusters the images itself; their `train` writes a run folder.
END_TO_END = ("mmdc", "imc_swav")


@dataclass
class ClusterConfig:
    """Configuration of ``deepclust cluster``: a folder of images in, a run folder out.

    Attributes
    ----------
    images : str
        Folder searched recursively for images.
    out : str
        Run folder to write (created if absent; reused to resume).
    n_clusters : int, "auto" or None
        Number of clusters; ``None`` means the number of classes when labels are known;
        ``"auto"`` estimates it (``k_method`` over ``k_min..k_max``). Density algorithms
        (dbscan, optics, hdbscan) find their own and ignore it.
    algorithm : str
        A name from :func:`deepclust.cluster.list_clusterers`.
    cluster_params : dict
        Further parameters of the algorithm, e.g. ``{"eps": 0.3}`` for dbscan or
        ``{"n_neighbors": 15}`` for spectral.
    k_method : str or None
        ``generalization``, ``stability`` (:mod:`deepclust.selection`: the clusterings of ``algorithm``
        scored), ``eigengap``, ``silhouette`` or ``c2m`` (needs ``k_metric``); None: the algorithm's own choice
        (eigengap for spectral, silhouette for the others).
    k_min, k_max : int
        Range searched by ``n_clusters="auto"``.
    k_metric : str or None
        With ``k_method="c2m"``: the learned metric file (``deepclust train --method c2m``).
    backbone, weights, image_size, pooling
        See :func:`deepclust.features.backbones.create_backbone`: ``backbone`` is a short name
        (``deepclust backbones``), a timm or open_clip name or a ``hf-hub:`` id; ``weights``
        also a downloaded model folder (``deepclust fetch-model``); ``pooling`` ``cls`` or
        ``mean`` for ViTs.
    names : str or None
        A file of candidate names, one per line (e.g. a species checklist): each cluster gets
        its three most likely names by zero-shot matching with the backbone's text tower
        (CLIP-family backbones only; :mod:`deepclust.naming`).
    batch_size, num_workers, device
        Embedding extraction settings. ``num_workers=None`` decodes images in the main
        process on a CPU device (workers only compete with the forward pass for the same
        cores there) and in ``min(4, cpus)`` worker processes beside a GPU.
    seed : int
        Seeds the clustering.
    labels : str or None
        ``"folders"``: each image's parent folder is its true class (for scoring only).
    split, subset : str or None
        Keep only the classes of one subset of a split (a shipped name such as
        ``eu-moths`` or a split file), e.g. ``split="eu-moths", subset="test"``.
    normalize : bool
        L2-normalise embeddings before clustering (cosine geometry).
    progress : bool
        Show progress bars.
    fast_decode : bool
        Decode JPEGs directly at about twice the model's input size (PIL draft mode), the
        default: on 12-MP photos 5x faster with vectors at cosine 0.9997 to a full decode's
        and the same k-means ARI; no change for images already small (docs/scale.md).
    flip_average : bool
        Embed each image as the mean of its features and its mirror image's: twice the
        embedding time, features that do not depend on which way the subject faces.
    precision : str
        ``fp32`` (default), or on request ``int8`` (ONNX Runtime, statically quantized) or
        ``bf16`` (OpenVINO, CPUs with bf16 instructions): faster, slightly different vectors
        (:mod:`deepclust.features.runtime`; their cost in ARI is in docs/scale.md).
    cache : str or None
        The embedding cache folder (``--cache DIR``); None: the user's shared one
        (:func:`deepclust.features.cache.embedding_cache`), which every run, ``predict``
        and ``select`` read and fill, so no image is embedded twice with one backbone.
    labelled : str or None
        The images whose class is known, for ``k_method="labels"`` (chosen by default when
        this is given with ``n_clusters="auto"``): a ``feedback.json`` of ``deepclust
        review``, ``SPLIT:SUBSET`` (images in the folders of that subset's classes), or a
        folder inside ``images`` sorted into one sub-folder per class.
    unknown : bool
        Put the images far from every other (:func:`deepclust.cluster.space.isolated_images`:
        the nearest other image beyond the upper Tukey fence of the run's own nearest-image
        distances) into cluster -1, "unknown", instead of forcing them into a cluster.
    runtime : str
        What runs the backbone when embedding: ``auto`` (ONNX Runtime on a CPU where it is
        installed and the backbone exports, else PyTorch), ``onnxruntime`` or ``torch``.
    embeddings : str or None
        An embedding store of ``deepclust embed`` to cluster instead of ``images``
        (k-means or spectral at scale, block by block; see :mod:`deepclust.cluster.at_scale`).
    scheduler : str or None
        With ``embeddings``: ``local[N]`` (a Dask cluster of N processes on this
        machine), a Dask scheduler address, or None (this process, no Dask).
    """

    images: str = ""
    out: str = ""
    n_clusters: int | str | None = None
    algorithm: str = "kmeans"
    cluster_params: dict = dataclasses.field(default_factory=dict)
    k_method: str | None = None
    k_min: int = 2
    k_max: int = 50
    k_metric: str | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    image_size: int | None = None
    pooling: str | None = None
    names: str | None = None
    batch_size: int = 32
    num_workers: int | None = None
    device: str = "cpu"
    seed: int = 0
    labels: str | None = None
    split: str | None = None
    subset: str | None = None
    normalize: bool = True
    progress: bool = True
    fast_decode: bool = True
    flip_average: bool = False
    unknown: bool = False
    labelled: str | None = None
    cache: str | None = None
    precision: str = "fp32"
    runtime: str = "auto"
    embeddings: str | None = None
    scheduler: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """Configuration of ``deepclust train``: fine-tune a backbone on the labelled classes
    of one subset and select it on the classes of another (Bjerge et al., VISAPP 2025).

    Attributes
    ----------
    method : str
        ``episodic`` (Prototypical-Network tasks plus the scatter loss) or ``classic``
        (a linear classifier over the training classes).
    images, split : str
        Folder of class subfolders, and the class split (shipped name or file).
    train_subset, val_subset : str
        Subsets of the split to train on and to select the model on.
    out : str
        Training folder: checkpoints (``last.pt``, ``best.pt``), ``history.csv``,
        ``train_summary.json``. Reused to resume.
    backbone, weights, image_size
        See :func:`deepclust.features.backbones.create_backbone`.
    trainable_stages : int or None
        Train only the last N stages of the backbone (and what follows them); None
        trains all of it.
    cache_views : int
        With a frozen part: compute it once for this many augmented views of every
        training image (and once for every validation image) and train on those; 0
        augments every image afresh (no cache).
    cache_dir : str or None
        Where the frozen-part cache lives (default ``out/cache``); several runs with the
        same backbone, cut and views can share one.
    epochs, milestones, gamma, lr, momentum, weight_decay
        SGD with a multi-step schedule (the paper: 9 epochs, milestones 3 and 6).
    n_way, n_shot, n_query, n_tasks
        Episodic tasks: classes per task, support and query images per class, tasks per epoch.
    alpha : float
        Weight of the scatter loss: ``alpha * Lm + (1 - alpha) * Lc``.
    classic_images_per_epoch : int or None
        Classic fine-tuning: training images per epoch (None: one pass over the data).
    batch_size : int
        Classic mini-batch size, and batch size when embedding.
    scale, hflip, color_jitter
        Augmentation: random resized crop scale range, flip probability, jitter strength.
    val_seeds : int
        K-means runs averaged for the validation cluster accuracy.
    normalize : bool
        L2-normalise embeddings before clustering the validation classes.
    device, seed, num_workers, progress
    """

    method: str = "episodic"
    images: str = ""
    split: str = ""
    train_subset: str = "train"
    val_subset: str = "val"
    out: str = ""
    backbone: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    image_size: int | None = None
    trainable_stages: int | None = None
    cache_views: int = 0
    cache_dir: str | None = None
    epochs: int = 9
    milestones: list = dataclasses.field(default_factory=lambda: [3, 6])
    gamma: float = 0.1
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    n_way: int = 20
    n_shot: int = 5
    n_query: int = 6
    n_tasks: int = 300
    alpha: float = 0.0
    classic_images_per_epoch: int | None = None
    batch_size: int = 64
    scale: list = dataclasses.field(default_factory=lambda: [0.6, 1.0])
    hflip: float = 0.5
    color_jitter: float = 0.3
    val_seeds: int = 1
    normalize: bool = True
    device: str = "cpu"
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EndToEndConfig:
    """What every end-to-end clustering method (``deepclust train --method mmdc|imc_swav``)
    shares: the data, the run folder, the seeded runs and their ensemble.

    Attributes
    ----------
    method : str
    images : str
        Folder searched recursively for images, resized to ``image_size``.
    dataset : dict
        Instead of a folder: ``{name: mnist|coil20, source: PATH}``.
    out : str
        Run folder: ``assignments.csv``, ``embeddings.npy``, ``summary.json``,
        ``metrics.json`` (with labels), ``skipped.csv``, ``config.yaml``, ``history.csv``
        and one ``seedN/`` checkpoint folder per seeded run. Reused to resume.
    n_clusters : int
        K (required).
    labels : str or None
        ``folders``: each image's parent folder is its true class (for scoring only).
    image_size, channels : int
        Images of a folder are resized to ``image_size`` squared, with 1 or 3 channels.
    runs : int
        Seeded runs (seeds ``seed``, ``seed+1`` ...); more than one makes an ensemble.
    ensemble : str
        ``majority`` (vote after aligning runs to the lowest-loss one) or ``lowest_loss``.
    device, seed, progress
    params : dict
        The method's own settings: any argument of its estimator
        (:class:`deepclust.methods.mmdc.MMDC`, :class:`deepclust.methods.imc_swav.IMCSwAV`),
        checked against the estimator's signature before any work. In a YAML file or on the
        command line they are given flat (``epochs: 50``, ``--epochs 50``); the run fills in
        the estimator's defaults for the rest, so its ``config.yaml`` lists them all.
    """

    #: Keys a file or the command line gives that are not fields go to ``params``.
    FLAT_PARAMS: ClassVar[bool] = True

    method: str = ""
    images: str = ""
    dataset: dict = dataclasses.field(default_factory=dict)
    out: str = ""
    n_clusters: int | None = None
    labels: str | None = None
    image_size: int = 32
    channels: int = 3
    runs: int = 1
    ensemble: str = "majority"
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    params: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # a setting of the estimator reads like a field: config.epochs
        params = self.__dict__.get("params") or {}
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The shared fields and the method's settings, flat, as a YAML file gives them."""
        out = dataclasses.asdict(self)
        params = out.pop("params")
        return {**out, **params}


@dataclass
class MMDCConfig(EndToEndConfig):
    """Configuration of ``deepclust train --method mmdc``: train Multi-Modal Deep Clustering
    networks from scratch (Shiran and Weinshall, ICPR 2020). The shared options are those of
    :class:`EndToEndConfig`; ``params`` are arguments of :class:`deepclust.methods.mmdc.MMDC`
    (``lr: null`` = 0.05 for VGG, 0.01 for ResNets). ``embeddings.npy`` holds the
    K-dimensional outputs."""

    method: str = "mmdc"


@dataclass
class IMCSwAVConfig(EndToEndConfig):
    """Configuration of ``deepclust train --method imc_swav``: train IMC-SwAV networks from
    scratch (Ntelemis, Jin and Thomas, 2021). The shared options are those of
    :class:`EndToEndConfig`; ``params`` are arguments of
    :class:`deepclust.methods.imc_swav.IMCSwAV` (``crops: null`` = 2 views of 7/8 and 4 of
    9/16 of ``image_size``). ``embeddings.npy`` holds the L2-normalised projections."""

    method: str = "imc_swav"


@dataclass
class C2MConfig:
    """Configuration of ``deepclust train --method c2m``: learn a C2M clustering metric from
    labelled images (:class:`deepclust.methods.c2m_training.C2MTraining`).

    Attributes
    ----------
    method : str
    images : str
        Folder of class subfolders, represented by ``backbone`` embeddings.
    split, subset : str or None
        Only the classes of one subset of a split (e.g. ``eu-moths``, ``train``).
    dataset : dict
        Instead of a folder: ``{name: mnist|coil20, source: PATH}``, represented by pixels.
    out : str
        Output folder: ``metric.pt``, ``history.csv``, ``train_summary.json``,
        ``config.yaml``, ``skipped.csv``, ``cache/``.
    n_tasks, task_size : int
        Labelled datasets drawn from the images, and points in each (the paper: 20 of 200).
    max_clusters : int
        Most classes in a drawn dataset, and the most clusters the metric's search may use.
    epochs : int
        Passes of the critic over the datasets (the paper: 10; 1 for few-shot).
    preset : str
        ``images`` (default: what carries a metric over to unseen classes of image
        embeddings), ``transferable`` (2-D shapes: from blobs to moons and rings) or ``paper``
        (Algorithm 2 as published); see ``deepclust.cluster.c2m.PRESETS``.
    params : dict
        Further arguments of :class:`deepclust.cluster.c2m.C2M` on top of the preset
        (e.g. ``{n_neighbours: 15}``).
    backbone, weights, image_size, batch_size, num_workers, device
        Embedding settings, as for ``deepclust cluster``.
    seed, progress
    """

    method: str = "c2m"
    images: str = ""
    split: str | None = None
    subset: str | None = None
    dataset: dict = dataclasses.field(default_factory=dict)
    out: str = ""
    n_tasks: int = 20
    task_size: int = 200
    max_clusters: int = 50
    epochs: int = 10
    preset: str = "images"
    params: dict = dataclasses.field(default_factory=dict)
    backbone: str = DEFAULT_BACKBONE
    weights: str = "pretrained"
    image_size: int | None = None
    batch_size: int = 32
    num_workers: int | None = None
    device: str = "cpu"
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping from ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise DeepclustError(f"config file '{path}' does not exist; check the path") from None
    except IsADirectoryError:
        raise DeepclustError(f"config file '{path}' is a folder; pass the YAML file itself") from None
    except UnicodeDecodeError:
        raise DeepclustError(f"config file '{path}' is not a text file (it is not UTF-8); pass a YAML file") from None
    except OSError as exc:
        raise DeepclustError(f"cannot read config file '{path}' ({exc.strerror or exc}); check the path") from None
    except yaml.YAMLError as exc:
        raise DeepclustError(f"config file '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise DeepclustError(f"config file '{path}' must hold a mapping of option: value")
    return data


def build_config(cls, file: str | os.PathLike | None = None, **overrides: Any):
    """Instantiate config dataclass ``cls`` from a YAML file and keyword overrides.

    Unknown keys are an error that lists the known ones.
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update({str(k).replace("-", "_"): v for k, v in load_yaml(file).items()})
    values.update(overrides)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if getattr(cls, "FLAT_PARAMS", False):  # the method's settings, checked by the method against its estimator
        params = dict(values.pop("params", None) or {})
        params.update({k: values.pop(k) for k in list(values) if k not in fields})
        values["params"] = params
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise DeepclustError(
            f"unknown config option(s) {', '.join(unknown)}; known options: {', '.join(sorted(fields))}"
        )
    for name, value in values.items():
        # YAML reads `"false"` and `no` as strings, which Python takes as true: only true/false are booleans.
        if fields[name].type in ("bool", bool) and not isinstance(value, bool):
            raise DeepclustError(f"{name}={value!r} must be true or false (without quotes)")
    return cls(**values)


def write_config(path: str | os.PathLike, config) -> None:
    """Write a config dataclass as YAML, atomically (readable back with ``--config``)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    with atomic_write(path) as fh:
        yaml.safe_dump(data, fh, sort_keys=False, allow_unicode=True)

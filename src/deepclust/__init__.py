"""deepclust: cluster images of the same kind with deep features, when few or no labels exist.

The user's loop, one way: folder -> embed (features/) -> cluster (cluster/) -> run folder (runs)
-> report, export, predict (jobs/); see the README's Development section for the layers.
"""

from deepclust.lazy import lazy_names
from deepclust.version import __version__  # noqa: F401  (deepclust.__version__)

# The public names load their modules on first use (PEP 562), so that ``import deepclust``
# (and a Dask worker that only clusters stored vectors) does not pay for torch and timm.
_WHERE = {
    "Backbone": "features.backbones", "create_backbone": "features.backbones", "save_backbone": "features.backbones",
    "create_clusterer": "cluster", "list_clusterers": "cluster",
    "ClusterConfig": "config", "IMCSwAVConfig": "config", "MMDCConfig": "config", "TrainConfig": "config",
    "find_images": "data", "load_image": "data", "load_split": "data",
    "EmbeddingStore": "features.cache", "extract_embeddings": "features.extract", "embed_records": "features.extract",
    "DeepclustError": "errors",
    "MMDC": "methods", "IMCSwAV": "methods", "create_method": "methods", "list_methods": "methods",
    "evaluate_run": "jobs.evaluate", "run_cluster": "jobs.cluster",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())

__all__ = [
    "Backbone",
    "ClusterConfig",
    "IMCSwAV",
    "IMCSwAVConfig",
    "MMDC",
    "MMDCConfig",
    "TrainConfig",
    "DeepclustError",
    "EmbeddingStore",
    "create_backbone",
    "create_clusterer",
    "create_method",
    "embed_records",
    "evaluate_run",
    "extract_embeddings",
    "find_images",
    "list_clusterers",
    "list_methods",
    "load_image",
    "load_split",
    "run_cluster",
    "save_backbone",
]

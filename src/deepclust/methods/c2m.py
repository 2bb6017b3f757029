"""Kept for the names the README showed before the house was rebuilt: the learned C2M metric
lives in :mod:`deepclust.cluster.c2m` (a clusterer that finds its own k)."""

from deepclust.cluster.c2m import C2M, PRESETS, SEARCH_SETTINGS

__all__ = ["C2M", "PRESETS", "SEARCH_SETTINGS"]

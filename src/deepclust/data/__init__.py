"""Data: finding images in folders, loading them robustly, and class-split files."""

from deepclust.data.folders import (
    IMAGE_EXTENSIONS,
    ImageRecord,
    find_images,
    load_image,
)
from deepclust.data.splits import ClassSplit, list_splits, load_split, split_classes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "find_images",
    "load_image",
    "ClassSplit",
    "list_splits",
    "load_split",
    "split_classes",
]

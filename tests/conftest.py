"""Shared fixtures: real data from ../shared (referenced, never copied) and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPCLUST_SHARED", ROOT.parent / "shared"))
MOTHS = SHARED / "data" / "eu-moths"
CIFAR_RESNET = SHARED / "weights" / "cifar-resnet"

needs_moths = pytest.mark.skipif(not (MOTHS / "images").is_dir(), reason=f"EU moths not found at {MOTHS}")

#: Five EU-moths test species, clustered by the end-to-end tests.
FIVE_SPECIES = ("idaea_dimidiata", "mimas_tiliae", "ourapteryx_sambucaria", "sphinx_ligustri", "tethea_or")


@pytest.fixture(scope="session")
def moth_species_dir(tmp_path_factory):
    """A folder of symbolic links to five EU-moths species folders (no data copied)."""
    if not (MOTHS / "images").is_dir():
        pytest.skip(f"EU moths not found at {MOTHS}")
    root = tmp_path_factory.mktemp("moths")
    for species in FIVE_SPECIES:
        os.symlink(MOTHS / "images" / species, root / species, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def lite0_small():
    """The default backbone with its real offline ImageNet weights, at 128 px for speed."""
    from deepclust.backbones import create_backbone

    return create_backbone("tf_efficientnet_lite0", image_size=128)


@pytest.fixture()
def tiny_backbone():
    """timm's smallest test network with random weights, at 32 px."""
    from deepclust.backbones import create_backbone

    return create_backbone("test_efficientnet", weights="random", image_size=32)

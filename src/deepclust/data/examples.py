"""Small real image sets that ship inside installed dependencies, written out as folders.

Used by ``make demo`` when ``../shared/data`` is absent, and handy for trying deepclust::

    python -m deepclust.data.examples digits runs/digits-images
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from deepclust.errors import DeepclustError


def write_digits(out_dir: str | os.PathLike) -> int:
    """Write scikit-learn's 1,797 handwritten digits (8x8) as PNGs in ``out_dir/<digit>/``.

    Returns the number of images written; existing files are kept.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for i, (image, target) in enumerate(zip(images, digits.target)):
        folder = os.path.join(os.fspath(out_dir), str(int(target)))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.png")
        if not os.path.exists(path):
            Image.fromarray(image, mode="L").save(path)
    return len(images)


EXAMPLES = {"digits": write_digits}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in EXAMPLES:
        print(f"usage: python -m deepclust.data.examples {{{','.join(EXAMPLES)}}} OUT_DIR", file=sys.stderr)
        return 2
    try:
        n = EXAMPLES[argv[0]](argv[1])
    except (OSError, DeepclustError) as exc:
        print(f"deepclust: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} images to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

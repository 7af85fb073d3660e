"""Regenerate the bundled demo task data/demo/digits from scikit-learn's digits data.

Needs scikit-learn (``pip install scikit-learn``) only to regenerate the files; nothing in the
library imports it. The source is the UCI "Optical Recognition of Handwritten Digits" data
(E. Alpaydin and C. Kaynak, 1998, CC BY 4.0) as shipped by ``sklearn.datasets.load_digits``:
1797 grayscale 8x8 images with pixel values 0..16.

Each class contributes 50 training, 10 validation and 30 test images, drawn without
replacement with a fixed seed. Images are scaled to 0..255, upsampled to 32x32 with bicubic
interpolation and written as 8-bit grayscale PNGs. The list files keep the VTAB-1k names
(train800.txt, val200.txt, train800val200.txt, test.txt) although the counts are 500, 100,
600 and 300.

Usage: python data/prepare_demo.py [--out data/demo/digits]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
PER_CLASS = {"train800": 50, "val200": 10, "test": 30}
SIZE = 32


def write_demo(out: Path) -> dict[str, int]:
    """Write the PNG files and list files under ``out`` and return the image count per list."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(SEED)
    lines: dict[str, list[str]] = {name: [] for name in PER_CLASS}

    if (out / "images").exists():
        shutil.rmtree(out / "images")
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        start = 0
        for split, count in PER_CLASS.items():
            for index in indices[start : start + count]:
                relpath = f"images/{split}/{index:04d}.png"
                _write_png(digits.images[index], out / relpath)
                lines[split].append(f"{relpath} {label}")
            start += count

    # Sorting by file name (the index in the source data) mixes the classes in each list.
    for split in lines:
        lines[split] = sorted(lines[split])
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, split_lines in lines.items():
        (out / f"{split}.txt").write_text("\n".join(split_lines) + "\n")
    return {split: len(split_lines) for split, split_lines in lines.items()}


def _write_png(pixels: np.ndarray, path: Path) -> None:
    gray = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)
    image = Image.fromarray(gray).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "demo" / "digits")
    args = parser.parse_args()
    counts = write_demo(args.out)
    print(", ".join(f"{split}: {count}" for split, count in counts.items()))


if __name__ == "__main__":
    main()

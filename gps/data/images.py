"""Image decoding to 8-bit RGB, whatever the file's mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Images with an alpha channel are composited on this background before the alpha is dropped.
ALPHA_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image.

    The EXIF orientation is applied first. Then:

    - ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette images without
      transparency are converted with PIL.
    - Images with alpha (``RGBA``, ``LA``, ``PA``, palette with transparency) are composited
      on white (:data:`ALPHA_BACKGROUND`), so transparent pixels become white instead of
      whatever colour they happen to store.
    - 16-bit grayscale (``I;16*``, and ``I``, which Pillow uses for 16-bit PNGs) is scaled
      from 0..65535 to 0..255; values outside that range are clipped.
    - 32-bit float (``F``) is clipped to 0..255.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PIL.UnidentifiedImageError, OSError: the file is not a decodable image.
    """
    with Image.open(path) as img:
        img.load()
        # exif_transpose returns a new image (a copy when no rotation is needed), so the
        # result stays valid after the file is closed.
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64) / 257.0
        return _gray_array_to_rgb(values)
    if mode == "F":
        return _gray_array_to_rgb(np.asarray(img, dtype=np.float64))
    return img.convert("RGB")


def _gray_array_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")

"""load_rgb on real files of every image mode the datasets contain."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gps.data import load_rgb


def _pixel(image: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    return image.getpixel(xy)


def test_rgb_jpeg_unchanged(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (5, 4), (10, 200, 30)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (5, 4)
    assert _pixel(image) == (10, 200, 30)


def test_grayscale_l(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (4, 4), 77).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert _pixel(image) == (77, 77, 77)


def test_palette_p(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert Image.open(path).mode == "P"
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert _pixel(image) == (255, 0, 0)


def test_palette_with_transparency_on_white(tmp_path):
    path = tmp_path / "palette_alpha.png"
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0, 0, 255, 0])
    palette_image.putpixel((1, 1), 1)
    palette_image.save(path, transparency=0)
    image = load_rgb(path)
    assert _pixel(image, (0, 0)) == (255, 255, 255)
    assert _pixel(image, (1, 1)) == (0, 255, 0)


def test_rgba_composited_on_white(tmp_path):
    path = tmp_path / "rgba.png"
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    rgba.save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert _pixel(image, (0, 0)) == (255, 255, 255)
    assert _pixel(image, (1, 1)) == (0, 0, 255)
    assert _pixel(image, (2, 2)) == (127, 127, 127)


def test_grayscale_alpha_la(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (4, 4), (0, 0)).save(path)
    assert _pixel(load_rgb(path)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    image = load_rgb(path)
    assert image.mode == "RGB"
    red, green, blue = _pixel(image, (4, 4))
    assert red > 200
    assert green < 60
    assert blue < 60


def test_16bit_png_scaled(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert _pixel(image, (0, 0)) == (0, 0, 0)
    assert _pixel(image, (1, 0)) == (255, 255, 255)
    assert _pixel(image, (0, 1)) == (128, 128, 128)
    assert _pixel(image, (1, 1)) == (1, 1, 1)


def test_32bit_integer_tiff_scaled_and_clipped(tmp_path):
    path = tmp_path / "int32.tif"
    values = np.array([[65535 * 2, 32896], [-5, 0]], dtype=np.int32)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    image = load_rgb(path)
    assert _pixel(image, (0, 0)) == (255, 255, 255)
    assert _pixel(image, (1, 0)) == (128, 128, 128)
    assert _pixel(image, (0, 1)) == (0, 0, 0)


def test_float_tiff_clipped(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[300.0, 12.4]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == "F"
    image = load_rgb(path)
    assert _pixel(image, (0, 0)) == (255, 255, 255)
    assert _pixel(image, (1, 0)) == (12, 12, 12)


def test_exif_rotation_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    assert Image.open(path).size == (40, 20)
    image = load_rgb(path)
    assert image.size == (20, 40)
    # The left (red) half of the stored image becomes the top half.
    top_red, _, _ = _pixel(image, (10, 5))
    bottom_red, _, _ = _pixel(image, (10, 35))
    assert top_red > 200
    assert bottom_red < 50


def test_file_closed_after_load(tmp_path):
    path = tmp_path / "closed.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    image = load_rgb(path)
    path.unlink()
    assert image.getpixel((0, 0)) == (1, 2, 3)


def test_not_an_image_raises(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    with pytest.raises(OSError, match="cannot identify image file"):
        load_rgb(path)

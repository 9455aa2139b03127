"""Tests of deeppneumonia.data.imageio: PNG / JPEG decoding, format detection, guards (DICOM: test_dicom.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from deeppneumonia.data import imageio
from deeppneumonia.data.imageio import (
    MAX_PIXELS,
    MAX_SIDE,
    DecodedImage,
    ImageInfo,
    detect_format,
    probe_image,
    read_image,
    read_image_bytes,
)
from deeppneumonia.errors import ImageReadError

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _save(img: Image.Image, path: Path, fmt: str, **kwargs: Any) -> Path:
    img.save(path, fmt, **kwargs)
    return path


def _noise_rgb(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _raw_png(width: int, height: int, idat: bytes, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width x height`` whatever the (tiny) IDAT holds."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def no_pil_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any Pillow pixel decode fail loudly: proves a check happened before decoding."""

    def _boom(self: Any) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", _boom)


# --------------------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------------------


def test_8bit_grey_png(tmp_path: Path) -> None:
    arr = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    path = _save(Image.fromarray(arr, "L"), tmp_path / "grey.png", "PNG")
    img = read_image(path)
    assert isinstance(img, DecodedImage)
    assert img.pixels.dtype == np.float32
    assert img.pixels.shape == (16, 16)
    np.testing.assert_allclose(img.pixels, arr.astype(np.float32) / 255.0, rtol=0, atol=1e-7)
    assert img.pixels[0, 0] == 0.0 and img.pixels[-1, -1] == 1.0
    assert img.info == ImageInfo(format="PNG", width=16, height=16, channels=1, bit_depth=8)


def test_16bit_png_values_preserved(tmp_path: Path) -> None:
    arr = np.array([[65535, 32768, 0], [1, 4095, 65534]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "deep.png", "PNG")
    img = read_image(path)
    assert img.pixels.shape == (2, 3)
    assert img.pixels.dtype == np.float32
    assert img.pixels[0, 0] == 1.0
    assert img.pixels[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert img.pixels[0, 2] == 0.0
    np.testing.assert_allclose(img.pixels, arr / 65535.0, rtol=0, atol=1e-6)
    assert img.info.bit_depth == 16
    assert img.info.channels == 1


def test_16bit_png_no_stretch(tmp_path: Path) -> None:
    arr = np.full((4, 4), 1000, dtype=np.uint16)
    arr[0, 0] = 2000
    img = read_image(_save(Image.fromarray(arr), tmp_path / "dim.png", "PNG"))
    assert float(img.pixels.max()) == pytest.approx(2000 / 65535, rel=1e-6)


def test_rgb_jpeg_becomes_grey(tmp_path: Path) -> None:
    src = _noise_rgb()
    path = _save(src, tmp_path / "colour.jpg", "JPEG", quality=95)
    img = read_image(path)
    assert img.pixels.shape == (48, 64)
    assert img.pixels.dtype == np.float32
    assert float(img.pixels.min()) >= 0.0 and float(img.pixels.max()) <= 1.0
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.info == ImageInfo(format="JPEG", width=64, height=48, channels=3, bit_depth=8)


def test_pure_red_png_is_luminance(tmp_path: Path) -> None:
    red = Image.new("RGB", (5, 3), (255, 0, 0))
    img = read_image(_save(red, tmp_path / "red.png", "PNG"))
    assert img.pixels.shape == (3, 5)
    np.testing.assert_allclose(img.pixels, 76 / 255.0, atol=1 / 255)  # 0.299 * 255


def test_rgba_png(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (6, 4), (200, 200, 200, 0))
    img = read_image(_save(rgba, tmp_path / "rgba.png", "PNG"))
    assert img.pixels.shape == (4, 6)
    np.testing.assert_allclose(img.pixels, 200 / 255.0, atol=1e-6)  # alpha is ignored
    assert img.info.channels == 4


def test_la_png(tmp_path: Path) -> None:
    la = Image.new("LA", (3, 2), (77, 128))
    img = read_image(_save(la, tmp_path / "la.png", "PNG"))
    np.testing.assert_allclose(img.pixels, 77 / 255.0, atol=1e-6)
    assert img.info.channels == 2


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(tmp_path: Path, transparent: bool) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128] + [0, 0, 0] * 253)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 2)
    kwargs = {"transparency": 0} if transparent else {}
    path = _save(pal, tmp_path / "pal.png", "PNG", **kwargs)
    img = read_image(path)
    assert img.pixels.shape == (4, 4)
    assert img.pixels[0, 0] == 0.0
    assert img.pixels[0, 1] == pytest.approx(128 / 255.0, abs=1e-6)
    assert img.pixels[3, 3] == 1.0
    assert img.info.channels == (4 if transparent else 3)


def test_bilevel_png(tmp_path: Path) -> None:
    bw = Image.new("1", (8, 2), 0)
    bw.putpixel((0, 0), 1)
    img = read_image(_save(bw, tmp_path / "bw.png", "PNG"))
    assert img.pixels[0, 0] == 1.0 and img.pixels[1, 7] == 0.0


def test_format_from_magic_not_extension(tmp_path: Path) -> None:
    png_named_jpg = _save(Image.new("L", (3, 3), 9), tmp_path / "really_png.jpg", "PNG")
    jpg_named_png = _save(_noise_rgb(), tmp_path / "really_jpeg.png", "JPEG")
    assert detect_format(png_named_jpg) == "PNG"
    assert detect_format(jpg_named_png) == "JPEG"
    assert read_image(png_named_jpg).info.format == "PNG"
    assert read_image(jpg_named_png).info.format == "JPEG"


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    good = _save(_noise_rgb(128, 128), tmp_path / "full.jpg", "JPEG").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(good[: int(len(good) * 0.6)])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*truncated"):
        read_image(path)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image_bytes(path.read_bytes(), name="cut.jpg")


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    good = _save(_noise_rgb(128, 128), tmp_path / "full.png", "PNG").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(good[: int(len(good) * 0.6)])
    with pytest.raises(ImageReadError, match=r"cut\.png.*truncated"):
        read_image(path)


def test_png_missing_iend_is_truncated(tmp_path: Path) -> None:
    good = _save(Image.new("L", (4, 4), 3), tmp_path / "full.png", "PNG").read_bytes()
    path = tmp_path / "no_iend.png"
    path.write_bytes(good[:-12])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_corrupt_png_data(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(_raw_png(8, 8, b"this is not zlib data at all"))
    with pytest.raises(ImageReadError, match=r"corrupt\.png"):
        read_image(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty file"):
        read_image(path)
    with pytest.raises(ImageReadError, match="empty"):
        probe_image(path)
    with pytest.raises(ImageReadError, match="empty"):
        read_image_bytes(b"", name="upload.png")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match=r"nope\.png.*not found"):
        read_image(path)
    with pytest.raises(ImageReadError, match="not found"):
        probe_image(str(path))
    with pytest.raises(ImageReadError, match="not found"):
        detect_format(path)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path)


@pytest.mark.parametrize("filename", ["notes.png", "notes.dcm", "notes.jpg"])
def test_text_file_is_not_an_image(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_text("patient list\nnothing to see here\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.\w+: not an image"):
        read_image(path)
    with pytest.raises(ImageReadError, match="not an image"):
        detect_format(path)
    with pytest.raises(ImageReadError, match=r"upload\.png: not an image"):
        read_image_bytes(path.read_bytes(), name="upload.png")


def test_absurd_png_header_raises_before_decoding(tmp_path: Path, no_pil_decode: None) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_raw_png(100_000, 100_000, zlib.compress(b"\x00" * 64)))
    with pytest.raises(ImageReadError, match=r"bomb\.png.*(too large|limit)"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"bomb\.png.*(too large|limit)"):
        probe_image(path)
    with pytest.raises(ImageReadError, match=r"(too large|limit)"):
        read_image_bytes(path.read_bytes(), name="bomb.png")


def test_pillow_bomb_warning_becomes_error(tmp_path: Path, no_pil_decode: None) -> None:
    # 10000 x 10000 passes our (raised) guard but trips Pillow's DecompressionBombWarning.
    path = tmp_path / "big.png"
    path.write_bytes(_raw_png(10_000, 10_000, zlib.compress(b"\x00" * 64)))
    with pytest.raises(ImageReadError, match=r"big\.png.*too large"):
        read_image(path, max_pixels=10**9, max_side=10**6)


def test_max_pixels_and_max_side_guards(tmp_path: Path, no_pil_decode: None) -> None:
    path = _save(Image.new("L", (40, 30), 0), tmp_path / "small.png", "PNG")
    with pytest.raises(ImageReadError, match=r"small\.png.*40x30.*max_pixels"):
        read_image(path, max_pixels=1000)
    with pytest.raises(ImageReadError, match=r"small\.png.*max_side"):
        read_image(path, max_side=35)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image_bytes(path.read_bytes(), max_pixels=1199)


def test_module_guards_defaults() -> None:
    assert MAX_PIXELS == 80_000_000
    assert MAX_SIDE == 20_000


def test_probe_uses_module_guards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (40, 30), 0), tmp_path / "small.png", "PNG")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)
    with pytest.raises(ImageReadError, match="max_pixels"):
        probe_image(path)


# --------------------------------------------------------------------------------------------------
# probe_image and read_image_bytes
# --------------------------------------------------------------------------------------------------


def test_probe_png_and_jpeg_without_decoding(tmp_path: Path, no_pil_decode: None) -> None:
    deep = _save(Image.fromarray(np.zeros((7, 9), dtype=np.uint16)), tmp_path / "d.png", "PNG")
    colour = _save(_noise_rgb(20, 30), tmp_path / "c.jpg", "JPEG")
    rgba = _save(Image.new("RGBA", (5, 6)), tmp_path / "a.png", "PNG")
    assert probe_image(deep) == ImageInfo(format="PNG", width=9, height=7, channels=1, bit_depth=16)
    assert probe_image(str(colour)) == ImageInfo(format="JPEG", width=30, height=20, channels=3, bit_depth=8)
    assert probe_image(rgba) == ImageInfo(format="PNG", width=5, height=6, channels=4, bit_depth=8)


def test_probe_does_not_need_complete_pixels(tmp_path: Path) -> None:
    good = _save(_noise_rgb(128, 128), tmp_path / "full.png", "PNG").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(good[: int(len(good) * 0.6)])
    assert probe_image(path).width == 128  # header only
    with pytest.raises(ImageReadError):
        read_image(path)


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg"])
def test_read_bytes_matches_read_file(tmp_path: Path, kind: str) -> None:
    if kind == "png8":
        path = _save(_noise_rgb(), tmp_path / "x.png", "PNG")
    elif kind == "png16":
        arr = np.random.default_rng(1).integers(0, 65536, size=(10, 12), dtype=np.uint16)
        path = _save(Image.fromarray(arr), tmp_path / "x.png", "PNG")
    else:
        path = _save(_noise_rgb(), tmp_path / "x.jpg", "JPEG")
    from_file = read_image(path)
    from_bytes = read_image_bytes(path.read_bytes())
    np.testing.assert_array_equal(from_file.pixels, from_bytes.pixels)
    assert from_file.info == from_bytes.info


def test_read_bytes_writes_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = io.BytesIO()
    Image.new("L", (4, 4), 5).save(data, "PNG")
    monkeypatch.chdir(tmp_path)
    read_image_bytes(data.getvalue(), name="upload.png")
    assert list(tmp_path.iterdir()) == []


def test_deterministic(tmp_path: Path) -> None:
    path = _save(_noise_rgb(), tmp_path / "x.jpg", "JPEG")
    np.testing.assert_array_equal(read_image(path).pixels, read_image(path).pixels)

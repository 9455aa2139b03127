"""JPEG codestream guards: dimensions from the header, and scans too short for their blocks refused."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from deeppneumonia.data.readers.codestream import check_jpeg_complete, j2k_dims, jpeg_dims
from deeppneumonia.errors import ImageReadError


def encode(pixels: np.ndarray, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **options)
    return buf.getvalue()


def cut_last_scan(data: bytes, keep: float) -> bytes:
    start = data.rfind(b"\xff\xda")
    start += 2 + struct.unpack_from(">H", data, start + 2)[0]
    return data[:start + int((data.rfind(b"\xff\xd9") - start) * keep)] + b"\xff\xd9"


OPTIONS = [{}, {"optimize": True}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 2, "quality": 20},
           {"quality": 100}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("content", ["noise", "flat", "gradient"])
def test_valid_jpegs_pass(options: dict[str, object], mode: str, content: str) -> None:
    rng = np.random.default_rng(0)
    h, w = 123, 77  # not a multiple of the block or MCU size
    pixels = {"noise": rng.integers(0, 256, (h, w, 3)), "flat": np.zeros((h, w, 3)),
              "gradient": np.broadcast_to(np.arange(w)[None, :, None] * 3, (h, w, 3))}[content].astype(np.uint8)
    data = encode(np.ascontiguousarray(Image.fromarray(pixels).convert(mode)), **options)
    check_jpeg_complete(data, "ok.jpg")
    assert jpeg_dims(data) == (w, h)


@pytest.mark.parametrize("options", [{}, {"optimize": True}, {"subsampling": 0}], ids=["default", "optimize", "444"])
def test_a_scan_cut_short_before_an_eoi_is_refused(options: dict[str, object]) -> None:
    data = encode(np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8), **options)
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated JPEG file: scan 0 holds \d+ bytes"):
        check_jpeg_complete(cut_last_scan(data, 0.01), "cut.jpg")
    # Pillow itself decodes it without a word: the fill is silent, which is why the guard exists.
    with Image.open(io.BytesIO(cut_last_scan(data, 0.01))) as img:
        img.load()


def test_the_least_bits_bound_is_tight_enough_for_a_flat_image() -> None:
    # A flat image costs about the bound's bits per block; cutting it to a quarter is caught.
    data = encode(np.full((512, 512), 128, np.uint8), optimize=True)
    check_jpeg_complete(data, "flat.jpg")
    with pytest.raises(ImageReadError, match="truncated"):
        check_jpeg_complete(cut_last_scan(data, 0.25), "flat.jpg")


def test_missing_eoi_and_missing_scan_are_refused() -> None:
    data = encode(np.zeros((16, 16), np.uint8))
    with pytest.raises(ImageReadError, match="no end-of-image marker"):
        check_jpeg_complete(data[:-2], "a.jpg")
    with pytest.raises(ImageReadError, match="no image scan"):
        check_jpeg_complete(data[:data.find(b"\xff\xda")], "a.jpg")


def test_j2k_dims_from_siz() -> None:
    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIIIIIII", 300, 200, 10, 20, 300, 200, 0, 0)
    assert j2k_dims(siz) == (290, 180)
    assert j2k_dims(b"\x00" * 64) is None

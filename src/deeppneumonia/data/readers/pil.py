"""PNG and JPEG through Pillow: header information, completeness checks, decoding to one grey channel.

8-bit data is divided by 255, 16-bit data by 65535 (no contrast stretch); colour becomes luminance. Pillow
reduces 16-bit colour PNGs to 8 bits per sample, so their precision is 8 bits. Truncated files are always
an error: the byte stream is checked for completeness (PNG chunks up to ``IEND``; for JPEG the end-of-image
marker after the last scan and scans long enough for their blocks, :func:`.codestream.check_jpeg_complete`),
so the result never depends on :data:`PIL.ImageFile.LOAD_TRUNCATED_IMAGES`.
Pillow's ``DecompressionBombWarning`` is made an error inside :func:`warnings.catch_warnings`, whose filter
state is process-wide before Python 3.14 (harmless here: only that warning category is touched).
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from deeppneumonia.data.readers.codestream import check_jpeg_complete
from deeppneumonia.data.readers.types import LUMA, DecodedImage, ImageInfo, check_dims
from deeppneumonia.errors import ImageReadError, ImageTooLargeError

__all__ = ["PNG_MAGIC", "decode_pil", "probe_pil"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# 8-bit modes that PIL's convert("L") handles directly.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)



def _pil_formats(fmt: str) -> tuple[str, ...]:
    """The Pillow formats to try for ``fmt`` (JPEG also accepts MPO)."""
    return ("JPEG", "MPO") if fmt == "JPEG" else (fmt,)


@contextmanager
def _pil_guard(name: str, fmt: str) -> Iterator[None]:
    """Turn Pillow's decompression-bomb warning/error and decoder failures into ImageReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (ImageReadError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name}: image too large (Pillow decompression-bomb guard): {exc}") from exc
    except Exception as exc:
        what = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageReadError(f"{name}: {what} {fmt} file: {type(exc).__name__}: {exc}") from exc


def _png_header(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from the PNG IHDR chunk, or None when the header is short."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _check_png_header_dims(data: bytes, name: str, max_pixels: int, max_side: int) -> None:
    """Check the IHDR dimensions before Pillow sees the file, so the message names our limits, not Pillow's."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
        if width > 0 and height > 0:
            check_dims(ImageInfo("PNG", width, height, 1, 8), name, max_pixels, max_side)


def _pil_info(img: Image.Image, fmt: str, head: bytes) -> ImageInfo:
    """Header information of an opened Pillow image (16-bit depth taken from the PNG IHDR where Pillow drops it)."""
    mode = img.mode
    channels = (4 if mode == "PA" or "transparency" in img.info else 3) if mode in ("P", "PA") else len(img.getbands())
    bit_depth = 16 if mode in _SIXTEEN_BIT_MODES else 8
    if fmt == "PNG":
        ihdr = _png_header(head)
        if ihdr is not None and ihdr[0] == 16:
            bit_depth = 16  # Pillow keeps only 8 bits of 16-bit colour PNGs, the file still has 16
    width, height = img.size
    return ImageInfo(
        format=img.format or fmt, width=width, height=height, channels=channels, bit_depth=bit_depth
    )


def _check_png_complete(data: bytes, name: str) -> None:
    """Walk the PNG chunks: each must be complete, and the stream must reach IEND."""
    pos = len(PNG_MAGIC)
    n = len(data)
    while pos + 8 <= n:
        (length,) = struct.unpack_from(">I", data, pos)
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            raise ImageReadError(
                f"{name}: truncated PNG file: chunk {ctype!r} at byte {pos} needs {end} bytes, "
                f"the file has {n}"
            )
        if ctype == b"IEND":
            return
        pos = end
    raise ImageReadError(f"{name}: truncated PNG file: the data ends before the IEND chunk")


def decode_pil(data: bytes, fmt: str, name: str, max_pixels: int, max_side: int) -> DecodedImage:
    """Decode a JPEG or PNG file to grey [0, 1] pixels.

    Dimensions and completeness (PNG chunks up to IEND, JPEG up to EOI) are checked before the pixels are
    decoded; failures raise ImageReadError (ImageTooLargeError for decompression bombs).
    """
    if fmt == "PNG":
        _check_png_header_dims(data, name, max_pixels, max_side)
    with _pil_guard(name, fmt):
        img = Image.open(io.BytesIO(data), formats=_pil_formats(fmt))
        with img:
            info = _pil_info(img, fmt, data[:64])
            check_dims(info, name, max_pixels, max_side)
            # Checked here, not left to Pillow: ImageFile.LOAD_TRUNCATED_IMAGES may be set globally.
            if fmt == "PNG":
                _check_png_complete(data, name)
            else:
                check_jpeg_complete(data, name)
            img.load()
            pixels = _pil_to_grey(img, name)
    return DecodedImage(pixels=pixels, info=info)



def _pil_to_grey(img: Image.Image, name: str) -> np.ndarray:
    """(H, W) float32 grey in [0, 1] of a loaded Pillow image.

    16-bit modes are divided by 65535, palette images expanded to colour, and other modes converted to ``L``;
    ImageReadError for a mode that is not 8- or 16-bit.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        out = arr.astype(np.float32)
        out /= np.float32(65535.0)
        if mode == "I":  # 32-bit container: guard against values outside the 16-bit range
            np.clip(out, 0.0, 1.0, out=out)
        return out
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode not in _EIGHT_BIT_MODES:
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.dtype == np.uint16:
            # 16-bit colour (not produced by current Pillow, handled for completeness).
            grey = arr[..., :3].astype(np.float32) @ LUMA
            grey /= np.float32(65535.0)
            return grey
        if arr.dtype != np.uint8:
            raise ImageReadError(f"{name}: unsupported pixel mode {mode!r}")
    if img.mode != "L":
        img = img.convert("L")
    out = np.asarray(img).astype(np.float32)
    out /= np.float32(255.0)
    return out


def probe_pil(path: Path, fmt: str) -> ImageInfo:
    """Header information of a PNG or JPEG file, read without decoding its pixels."""
    name = str(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            fh.seek(0)
            with _pil_guard(name, fmt):
                img = Image.open(fh, formats=_pil_formats(fmt))
                with img:
                    return _pil_info(img, fmt, head)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot read file: {exc}") from exc

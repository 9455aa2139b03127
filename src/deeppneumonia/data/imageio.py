"""Decode chest X-ray images (PNG, JPEG, DICOM) into one grey float32 channel in [0, 1].

Every reader returns a :class:`DecodedImage` whose ``pixels`` are ``(H, W)`` float32 in ``[0, 1]`` with
bright = dense (the DICOM MONOCHROME2 convention), and every failure raises
:class:`~deeppneumonia.errors.ImageReadError` (or its subclass
:class:`~deeppneumonia.errors.UnsupportedTransferSyntaxError`, :class:`~deeppneumonia.errors.NotAnImageError`
for content that is no image, :class:`~deeppneumonia.errors.ImageTooLargeError` for dimensions above the
guards) with a message naming the file and saying what is wrong.

* The format is found from the magic bytes, never from the extension.
* Dimensions are checked against ``max_pixels`` / ``max_side`` from the header, before any pixel is
  decoded (decompression-bomb guard).
* Truncated PNG / JPEG files are always an error: the byte stream is checked for completeness
  (PNG chunks up to ``IEND``, JPEG end-of-image marker after the last scan) so the result never depends
  on :data:`PIL.ImageFile.LOAD_TRUNCATED_IMAGES`.
* PNG / JPEG: 8-bit data is divided by 255, 16-bit data by 65535 (no contrast stretch); colour becomes
  luminance. Pillow reduces 16-bit colour PNGs to 8 bits per sample, so their precision is 8 bits.
* DICOM (needs ``pydicom``; see :mod:`~.dicom`): frame 0, modality LUT (RescaleSlope/Intercept or Modality LUT), then the
  VOI LUT or window (WindowCenter/WindowWidth) mapped onto [0, 1], or a min-max scale when the file has
  neither; MONOCHROME1 is inverted. Colour DICOM becomes luminance divided by ``2**BitsStored - 1``.

Pillow's ``DecompressionBombWarning`` is made an error inside :func:`warnings.catch_warnings`, whose filter
state is process-wide before Python 3.14 (harmless here: only that warning category is touched).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deeppneumonia.errors import ImageReadError, ImageTooLargeError, NotAnImageError

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "DecodedImage",
    "ImageInfo",
    "detect_format",
    "probe_image",
    "read_image",
    "read_image_bytes",
]

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 80_000_000
"""Default decompression-bomb guard: largest accepted ``width * height``."""

MAX_SIDE: int = 20_000
"""Default guard on the longest accepted side, in pixels."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128
_HEAD_BYTES = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)

# ITU-R BT.601 luma weights, as used by PIL's convert("L").
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# 8-bit modes that PIL's convert("L") handles directly.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)



@dataclass(frozen=True)
class ImageInfo:
    """What the file header says about an image."""

    format: str
    """``"JPEG"``, ``"PNG"``, ``"DICOM"``, or another PIL format name (e.g. ``"MPO"``)."""
    width: int
    height: int
    channels: int
    """Channels stored in the file (1 grey, 2 grey+alpha, 3 colour or palette, 4 with alpha)."""
    bit_depth: int
    """Bits per sample: 8 or 16 for PNG/JPEG, BitsStored for DICOM."""


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels plus the header information of the file they came from."""

    pixels: np.ndarray
    """``(H, W)`` float32 in ``[0, 1]``, one grey channel, bright = dense (MONOCHROME2)."""
    info: ImageInfo


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def detect_format(path: Path | str) -> str:
    """Return ``"JPEG"``, ``"PNG"`` or ``"DICOM"`` from the file's magic bytes (not its extension).

    A DICOM file is recognised by ``DICM`` at offset 128; a preamble-less DICOM file is accepted only
    when its extension is ``.dcm`` and pydicom can force-read an image header from it.

    Raises:
        ImageReadError: the file is missing, empty, unreadable or not an image.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file: {exc}") from exc
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    fmt = _format_from_head(head)
    if fmt is not None:
        return fmt
    if path.suffix.lower() == ".dcm" and _looks_like_headless_dicom(path):
        return "DICOM"
    raise NotAnImageError(_not_an_image_message(str(path), head))


def probe_image(path: Path | str) -> ImageInfo:
    """Read only the header of an image file and return its :class:`ImageInfo`.

    The dimensions are checked against the module guards :data:`MAX_PIXELS` and :data:`MAX_SIDE`.

    Raises:
        ImageReadError: the file is missing, empty, not an image, has a corrupt header or is too large.
    """
    path = Path(path)
    name = str(path)
    fmt = detect_format(path)
    if fmt == "DICOM":
        from deeppneumonia.data.dicom import dicom_info, import_pydicom

        pydicom = import_pydicom(name)
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            info = dicom_info(ds, name)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{name}: corrupt DICOM header: {exc}") from exc
    else:
        try:
            with path.open("rb") as fh:
                head = fh.read(64)
                fh.seek(0)
                with _pil_guard(name, fmt):
                    img = Image.open(fh, formats=_pil_formats(fmt))
                    with img:
                        info = _pil_info(img, fmt, head)
        except ImageReadError:
            raise
        except OSError as exc:
            raise ImageReadError(f"{name}: cannot read file: {exc}") from exc
    check_dims(info, name, MAX_PIXELS, MAX_SIDE)
    return info


def read_image(path: Path | str, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE) -> DecodedImage:
    """Decode a PNG, JPEG or DICOM file into one grey float32 channel in ``[0, 1]``.

    Args:
        path: the image file.
        max_pixels: largest accepted ``width * height`` (checked from the header, before decoding).
        max_side: largest accepted width or height.

    Raises:
        ImageReadError: missing, empty, truncated, corrupt, not an image, too large, or a DICOM file
            without pixel data.
        UnsupportedTransferSyntaxError: a compressed DICOM whose decoder plugin is not installed.
    """
    path = Path(path)
    name = str(path)
    fmt = detect_format(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{name}: cannot read file: {exc}") from exc
    return _decode(data, fmt, name, max_pixels, max_side)


def read_image_bytes(
    data: bytes, *, name: str = "<upload>", max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE
) -> DecodedImage:
    """Decode an in-memory PNG, JPEG or DICOM file (e.g. an upload); nothing is written to disk.

    ``name`` is used in error messages and, when it ends in ``.dcm``, allows preamble-less DICOM
    data. Gives the same pixels as :func:`read_image` on a file with the same bytes.

    Raises:
        ImageReadError / UnsupportedTransferSyntaxError: as :func:`read_image`.
    """
    data = bytes(data)
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    fmt = _format_from_head(data[:_HEAD_BYTES])
    if fmt is None:
        if name.lower().endswith(".dcm") and _looks_like_headless_dicom(data):
            fmt = "DICOM"
        else:
            raise NotAnImageError(_not_an_image_message(name, data[:_HEAD_BYTES]))
    return _decode(data, fmt, name, max_pixels, max_side)


# --------------------------------------------------------------------------------------------------
# Format detection and guards
# --------------------------------------------------------------------------------------------------


def _check_regular_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot access file: {exc}") from exc
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")


def _format_from_head(head: bytes) -> str | None:
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if head[_DICOM_MAGIC_OFFSET:_HEAD_BYTES] == _DICOM_MAGIC:
        return "DICOM"
    return None


def _not_an_image_message(name: str, head: bytes) -> str:
    sig = head[:8].hex(" ") if head else "(empty)"
    return (
        f"{name}: not an image: unrecognised file signature {sig} "
        "(expected JPEG, PNG or DICOM; the format is detected from the content, not the extension)"
    )


def _looks_like_headless_dicom(source: Path | bytes) -> bool:
    """Whether pydicom can force-read an image header from a DICOM stream without preamble."""
    try:
        import pydicom
    except ImportError:
        return False
    try:
        fp: Any = source if isinstance(source, Path) else io.BytesIO(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception as exc:  # any parse failure means "not DICOM"; the caller reports the file as not an image
        logger.debug("not a preamble-less DICOM (%s: %s)", type(exc).__name__, exc)
        return False


def check_dims(info: ImageInfo, name: str, max_pixels: int, max_side: int) -> None:
    """Raise when the header's dimensions are invalid or above the guards (before any pixel is decoded)."""
    w, h = info.width, info.height
    if w <= 0 or h <= 0:
        raise ImageReadError(f"{name}: invalid image dimensions {w}x{h}")
    if max(w, h) > max_side:
        raise ImageTooLargeError(
            f"{name}: image is {w}x{h}, a side is longer than the limit of {max_side} pixels "
            "(max_side); refusing to decode it"
        )
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} pixels "
            "(max_pixels, decompression-bomb guard); refusing to decode it"
        )


def _decode(data: bytes, fmt: str, name: str, max_pixels: int, max_side: int) -> DecodedImage:
    if fmt == "DICOM":
        from deeppneumonia.data.dicom import decode_dicom  # imports this module's types: loaded on first use

        return decode_dicom(data, name, max_pixels, max_side)
    return _decode_pil(data, fmt, name, max_pixels, max_side)


# --------------------------------------------------------------------------------------------------
# PNG / JPEG through Pillow
# --------------------------------------------------------------------------------------------------


def _pil_formats(fmt: str) -> tuple[str, ...]:
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
    pos = len(_PNG_MAGIC)
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


def _check_jpeg_complete(data: bytes, name: str) -> None:
    """The last scan (SOS marker) must be followed by an end-of-image (EOI) marker."""
    last_sos = data.rfind(b"\xff\xda")
    if last_sos < 0:
        raise ImageReadError(f"{name}: truncated or corrupt JPEG file: no image scan (SOS marker)")
    if data.rfind(b"\xff\xd9") < last_sos:
        raise ImageReadError(
            f"{name}: truncated JPEG file: no end-of-image marker after the last scan ({len(data)} bytes)"
        )


def _decode_pil(data: bytes, fmt: str, name: str, max_pixels: int, max_side: int) -> DecodedImage:
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
                _check_jpeg_complete(data, name)
            img.load()
            pixels = _pil_to_grey(img, name)
    return DecodedImage(pixels=pixels, info=info)


def _pil_to_grey(img: Image.Image, name: str) -> np.ndarray:
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

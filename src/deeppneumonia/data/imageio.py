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
* DICOM (needs ``pydicom``): frame 0, modality LUT (RescaleSlope/Intercept or Modality LUT), then the
  VOI LUT or window (WindowCenter/WindowWidth) mapped onto [0, 1], or a min-max scale when the file has
  neither; MONOCHROME1 is inverted. Colour DICOM becomes luminance divided by ``2**BitsStored - 1``.
PNG / JPEG are read by :mod:`~deeppneumonia.data.readers.pil`, DICOM by :mod:`~deeppneumonia.data.readers.dicom`;
both return the types of :mod:`~deeppneumonia.data.readers.types`. This module detects the format and dispatches.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

from deeppneumonia.data.readers.pil import PNG_MAGIC, decode_pil, probe_pil
from deeppneumonia.data.readers.types import MAX_PIXELS, MAX_SIDE, DecodedImage, ImageInfo, check_dims
from deeppneumonia.errors import ImageReadError, NotAnImageError

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

_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC = b"DICM"
_DICOM_MAGIC_OFFSET = 128
_HEAD_BYTES = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)


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
        from deeppneumonia.data.readers.dicom import check_deflated, dicom_info, import_pydicom

        pydicom = import_pydicom(name)
        check_deflated(path, name, MAX_PIXELS, MAX_SIDE)  # pydicom inflates a deflated file whole, even for the header
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            info = dicom_info(ds, name)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{name}: corrupt DICOM header: {exc}") from exc
    else:
        info = probe_pil(path, fmt)
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
    """Raise ImageReadError unless ``path`` is an existing, accessible, non-empty regular file."""
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
    """``JPEG``, ``PNG`` or ``DICOM`` from the file signature in ``head``, or None."""
    if head.startswith(_JPEG_MAGIC):
        return "JPEG"
    if head.startswith(PNG_MAGIC):
        return "PNG"
    if head[_DICOM_MAGIC_OFFSET:_HEAD_BYTES] == _DICOM_MAGIC:
        return "DICOM"
    return None


def _not_an_image_message(name: str, head: bytes) -> str:
    """The error message for a file whose signature is not JPEG, PNG or DICOM (shows its first 8 bytes)."""
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
    from deeppneumonia.data.readers.dicom import check_deflated

    check_deflated(source, str(source) if isinstance(source, Path) else "<upload>", MAX_PIXELS, MAX_SIDE)
    try:
        fp: Any = source if isinstance(source, Path) else io.BytesIO(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception as exc:  # any parse failure means "not DICOM"; the caller reports the file as not an image
        logger.debug("not a preamble-less DICOM (%s: %s)", type(exc).__name__, exc)
        return False


def _decode(data: bytes, fmt: str, name: str, max_pixels: int, max_side: int) -> DecodedImage:
    """Decode ``data`` of the detected format ``fmt``: DICOM through pydicom, JPEG and PNG through Pillow."""
    if fmt == "DICOM":
        from deeppneumonia.data.readers.dicom import decode_dicom  # imports this module's types: loaded on first use

        return decode_dicom(data, name, max_pixels, max_side)
    return decode_pil(data, fmt, name, max_pixels, max_side)



"""What every image reader returns and the limits each one checks before decoding a pixel.

:class:`ImageInfo` is what a file header says, :class:`DecodedImage` the decoded pixels (``(H, W)`` float32
in ``[0, 1]``, bright = dense), :func:`check_dims` the decompression-bomb guard every reader calls with
the header's dimensions. The readers (:mod:`.pil` for PNG / JPEG, :mod:`.dicom`) and the dispatching
:mod:`deeppneumonia.data.imageio` import this module; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deeppneumonia.errors import ImageReadError, ImageTooLargeError

MAX_PIXELS: int = 80_000_000
"""Default decompression-bomb guard: largest accepted ``width * height``."""

MAX_SIDE: int = 20_000
"""Default guard on the longest accepted side, in pixels."""

# ITU-R BT.601 luma weights, as used by PIL's convert("L").
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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


"""DICOM through pydicom: header, transfer-syntax checks, frame 0, modality and VOI LUT, MONOCHROME1.

The pixels come out as :mod:`deeppneumonia.data.imageio` promises for every format: ``(H, W)`` float32 in
``[0, 1]``, bright = dense. Frame 0 only; the modality LUT (RescaleSlope/Intercept or a Modality LUT
Sequence), then the VOI LUT or the window (WindowCenter/WindowWidth) mapped onto [0, 1], or a min-max
scale when the file has neither; MONOCHROME1 is inverted (pydicom does not do that). Colour DICOM becomes
luminance divided by ``2**BitsStored - 1``. A compressed transfer syntax whose decoder plugin is missing is
an :class:`~deeppneumonia.errors.UnsupportedTransferSyntaxError` that names the package to install.

Decompression-bomb guards, all checked before a pixel is decoded: the Rows/Columns of the header; the
dimensions in the header of the compressed image inside the file (the SOF marker of a JPEG or JPEG-LS
codestream, the SIZ marker of a JPEG 2000 one: above the limits, or different from Rows/Columns, is
refused; a single-frame JPEG's scans must be complete, see :mod:`.codestream`); and for the deflated transfer
syntax the inflated size, bounded by streaming the inflation with a cap (the header plus the pixel data that
Rows, Columns, samples, bits and frames announce).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeppneumonia.data.readers.codestream import check_jpeg_complete, j2k_dims, jpeg_dims
from deeppneumonia.data.readers.types import LUMA, DecodedImage, ImageInfo, check_dims
from deeppneumonia.errors import ImageReadError, ImageTooLargeError, UnsupportedTransferSyntaxError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["check_deflated", "decode_dicom", "dicom_info", "import_pydicom"]

logger = logging.getLogger(__name__)

_JPEG_HINT = "pylibjpeg and pylibjpeg-libjpeg, or python-gdcm"
_J2K_HINT = "pylibjpeg and pylibjpeg-openjpeg, or python-gdcm"
_DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _JPEG_HINT,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _JPEG_HINT,  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": _JPEG_HINT,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _JPEG_HINT,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": _JPEG_HINT,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_HINT,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _J2K_HINT,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K_HINT,  # JPEG 2000
    "1.2.840.10008.1.2.4.92": _J2K_HINT,  # JPEG 2000 Part 2 Lossless
    "1.2.840.10008.1.2.4.93": _J2K_HINT,  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "pylibjpeg and pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg and pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg and pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg and pylibjpeg-rle (or a pydicom with its built-in RLE decoder)",
}
_GENERIC_HINT = (
    "a decoder plugin for it (pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or python-gdcm); "
    "if none supports this syntax, convert the file to an uncompressed transfer syntax first "
    "(e.g. `gdcmconv --raw in.dcm out.dcm`)"
)




_DEFLATED = "1.2.840.10008.1.2.1.99"
_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
_JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
                 "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_HEADER_LIMIT = 64 * 2**20  # inflated bytes before the pixel data: far above any real header
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def _meta_transfer_syntax(data: bytes) -> tuple[int, str | None]:
    """(offset where the dataset starts, TransferSyntaxUID) from the file meta group (group 0002)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    ts = None
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        if data[pos + 4:pos + 6] in _LONG_VRS:
            (length,), head = struct.unpack_from("<I", data, pos + 8), 12
        else:
            (length,), head = struct.unpack_from("<H", data, pos + 6), 8
        if element == 0x0010:
            ts = data[pos + head:pos + head + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += head + length
    return pos, ts


def check_deflated(source: bytes | Path, name: str, max_pixels: int, max_side: int) -> None:
    """Deflated transfer syntax: inflate in a stream with a cap before pydicom inflates it all; else nothing.

    The cap is the header (at most 64 MiB) plus the pixel data that the header announces (Rows x Columns x
    samples x bytes per sample x frames) plus 1 MiB; Rows/Columns are checked against the limits first.
    """
    if isinstance(source, Path):
        with source.open("rb") as fh:
            head = fh.read(4096)
        if _meta_transfer_syntax(head)[1] != _DEFLATED:
            return
        source = source.read_bytes()
    start, ts = _meta_transfer_syntax(source)
    if ts != _DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(source)[start:]
    header = bytearray()
    limit, total = _HEADER_LIMIT, 0
    try:
        while True:
            chunk = inflater.decompress(pending, 2**20)
            pending = memoryview(inflater.unconsumed_tail)
            total += len(chunk)
            if limit == _HEADER_LIMIT:
                header += chunk
                at = header.find(_PIXEL_DATA_TAG)
                if at >= 0:
                    limit = at + 12 + _announced_pixel_bytes(bytes(header[:at]), name, max_pixels, max_side) + 2**20
                    header = bytearray()
            if total > limit:
                what = ("a header above 64 MiB" if limit == _HEADER_LIMIT
                        else f"more than the {limit} bytes its header announces")
                raise ImageTooLargeError(f"{name}: deflated DICOM data inflates to {what}; refusing to inflate it "
                                         "(decompression-bomb guard)")
            if not pending or inflater.eof:
                break
    except zlib.error as exc:
        raise ImageReadError(f"{name}: corrupt deflated DICOM data: {exc}") from exc


def _announced_pixel_bytes(header: bytes, name: str, max_pixels: int, max_side: int) -> int:
    """Bytes of pixel data that a (deflated) dataset header announces; its dimensions checked against the limits."""
    from pydicom.filereader import read_dataset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_dataset(io.BytesIO(header), is_implicit_VR=False, is_little_endian=True)
        info = dicom_info(ds, name)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated") or 8)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{name}: corrupt deflated DICOM header: {exc}") from exc
    check_dims(info, name, max_pixels, max_side)
    if frames < 1 or info.width * info.height * frames > 16 * max_pixels:
        raise ImageTooLargeError(f"{name}: {frames} frames of {info.width}x{info.height} pixels: above the limit "
                                 f"of {16 * max_pixels} pixels in all; refusing to inflate it")
    return info.width * info.height * max(1, info.channels) * frames * max(1, (bits + 7) // 8)


def _fragments(pixel_data: bytes) -> list[bytes]:
    """The fragments of encapsulated pixel data after the Basic Offset Table item (up to the first non-item)."""
    pos, found = 0, []
    while pos + 8 <= len(pixel_data):
        if pixel_data[pos:pos + 4] != b"\xfe\xff\x00\xe0":  # (FFFE,E000) item
            break
        (length,) = struct.unpack_from("<I", pixel_data, pos + 4)
        found.append(pixel_data[pos + 8:pos + 8 + length])
        pos += 8 + length
    return found[1:]


def _check_codestream(ds: Dataset, ts: Any, info: ImageInfo, name: str, max_pixels: int, max_side: int) -> None:
    """The dimensions in the embedded JPEG / JPEG-LS / JPEG 2000 header: within the limits and equal to Rows/Columns."""
    uid = str(ts)
    if uid in _JPEG_SYNTAXES or uid in _JPEG_LS_SYNTAXES:
        kind, dims_of = ("JPEG-LS" if uid in _JPEG_LS_SYNTAXES else "JPEG"), jpeg_dims
    elif uid in _J2K_SYNTAXES:
        kind, dims_of = "JPEG 2000", j2k_dims
    else:
        return
    fragments = _fragments(bytes(ds.PixelData))
    dims = dims_of(fragments[0]) if fragments else None
    if dims is None:
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({_ts_label(ts)}): the first fragment holds no "
                             f"readable {kind} header")
    width, height = dims
    check_dims(ImageInfo(kind, width, height, info.channels, info.bit_depth), f"{name} (embedded {kind} image)",
               max_pixels, max_side)
    if (width, height) != (info.width, info.height):
        raise ImageReadError(f"{name}: the embedded {kind} image is {width}x{height} but the DICOM header says "
                             f"{info.width}x{info.height} (Columns x Rows); refusing to decode it")
    if kind == "JPEG" and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:  # one frame: every fragment is its data
        check_jpeg_complete(b"".join(fragments), f"{name} (embedded JPEG image)")


def import_pydicom(name: str) -> Any:
    """Return the pydicom module; ImageReadError naming the ``dicom`` extra when it is not installed."""
    try:
        import pydicom
    except ImportError as exc:
        raise ImageReadError(
            f"{name}: reading DICOM files needs pydicom: pip install 'deeppneumonia[dicom]'"
        ) from exc
    return pydicom


def dicom_info(ds: Dataset, name: str) -> ImageInfo:
    """Header information (size, samples per pixel, bits stored) of a DICOM data set; ImageReadError without Rows/Columns."""
    rows = ds.get("Rows")
    cols = ds.get("Columns")
    if rows is None or cols is None:
        raise ImageReadError(f"{name}: DICOM file has no Rows/Columns: it does not hold an image")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = ds.get("BitsStored") or ds.get("BitsAllocated") or 8
    return ImageInfo(format="DICOM", width=int(cols), height=int(rows), channels=samples, bit_depth=int(bits))


def _ensure_transfer_syntax(ds: Dataset) -> Any:
    """Return the transfer syntax UID, filling it in from the encoding for meta-less files."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None:
        return UID(str(ts))
    encoding = getattr(ds, "original_encoding", None)
    if encoding is None:  # pydicom < 3
        encoding = (getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True))
    implicit, little = encoding
    if implicit or implicit is None:
        ts = ImplicitVRLittleEndian
    elif little or little is None:
        ts = ExplicitVRLittleEndian
    else:
        ts = ExplicitVRBigEndian
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = ts
    return ts


def _ts_label(ts: Any) -> str:
    """``UID (name)`` of a transfer syntax, or ``UID (unknown transfer syntax)`` for an unregistered one."""
    try:
        label = str(ts.name)
    except (AttributeError, KeyError, ValueError):  # an unregistered UID has no name
        label = ""
    return f"{ts} ({label})" if label and label != str(ts) else f"{ts} (unknown transfer syntax)"


def _unsupported(name: str, ts: Any, detail: str) -> UnsupportedTransferSyntaxError:
    """The UnsupportedTransferSyntaxError for ``ts``, with a hint which decoder package to install."""
    hint = _DECODER_HINTS.get(str(ts), _GENERIC_HINT)
    return UnsupportedTransferSyntaxError(
        f"{name}: DICOM pixel data uses transfer syntax {_ts_label(ts)}, which cannot be decoded: "
        f"{detail}. Install {hint} (e.g. pip install 'deeppneumonia[dicom]')"
    )


def _check_decoder(ts: Any, name: str) -> bool:
    """Raise when pydicom >= 3 has no usable decoder for ``ts``; False when the check is not possible."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom < 3: decoding errors are mapped afterwards
        return False
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise _unsupported(name, ts, "pydicom has no decoder for this syntax") from exc
    if not decoder.is_available:
        missing = "; ".join(str(m) for m in decoder.missing_dependencies) or "no plugin available"
        raise _unsupported(name, ts, f"no decoder plugin is installed ({missing})")
    return True


def _dicom_lut_functions() -> tuple[Callable[..., np.ndarray], Callable[..., np.ndarray]]:
    """pydicom's ``apply_modality_lut`` and ``apply_voi_lut`` (from their pydicom 3 or pydicom 2 location)."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_modality_lut,
            apply_voi_lut,
        )
    return apply_modality_lut, apply_voi_lut


def decode_dicom(data: bytes, name: str, max_pixels: int, max_side: int) -> DecodedImage:
    """Decode frame 0 of a DICOM file to grey [0, 1] pixels.

    Raises ImageReadError (or a subclass) for a corrupt file, one without pixel data, an image above the limits or
    pixel data that cannot be decoded; other errors are wrapped in ImageReadError.
    """
    pydicom = import_pydicom(name)
    check_deflated(data, name, max_pixels, max_side)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageReadError(f"{name}: corrupt DICOM file: {exc}") from exc
    try:
        if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise ImageReadError(
                f"{name}: DICOM file has no pixel data (no PixelData element; "
                f"SOP class {ds.get('SOPClassUID', 'unknown')}): it does not hold an image"
            )
        info = dicom_info(ds, name)
        check_dims(info, name, max_pixels, max_side)
        frame = _dicom_frame0(ds, name, info, max_pixels, max_side)
        pixels = _dicom_to_grey(frame, ds, name)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise ImageReadError(f"{name}: cannot read DICOM image: {exc}") from exc
    return DecodedImage(pixels=pixels, info=info)


def _dicom_frame0(ds: Dataset, name: str, info: ImageInfo, max_pixels: int, max_side: int) -> np.ndarray:
    """The pixel array of frame 0 ((H, W), or (H, W, samples) for colour); warns when frames are dropped.

    Checks the decoder and the embedded codestream first; a missing decoder raises UnsupportedTransferSyntaxError,
    other decoding failures ImageReadError.
    """
    ts = _ensure_transfer_syntax(ds)
    checked = _check_decoder(ts, name)
    _check_codestream(ds, ts, info, name, max_pixels, max_side)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        logger.warning("%s: multi-frame DICOM (%d frames): using frame 0 only", name, n_frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd but decodable headers
            if hasattr(ds, "pixel_array_options"):  # pydicom >= 3: decode frame 0 only
                ds.pixel_array_options(index=0)
                arr = ds.pixel_array
            else:
                arr = ds.pixel_array
                if n_frames > 1:
                    arr = arr[0]
    except NotImplementedError as exc:
        if not checked:
            raise _unsupported(name, ts, str(exc)) from exc
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({_ts_label(ts)}): {exc}") from exc
    except RuntimeError as exc:
        if not checked and "missing" in str(exc).lower():
            raise _unsupported(name, ts, str(exc)) from exc
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({_ts_label(ts)}): {exc}") from exc
    except Exception as exc:
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({_ts_label(ts)}): {exc}") from exc
    arr = np.asarray(arr)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected_ndim = 3 if samples > 1 else 2
    if arr.ndim == expected_ndim + 1:  # a decoder returned all frames anyway
        arr = arr[0]
    if arr.ndim != expected_ndim:
        raise ImageReadError(
            f"{name}: unexpected DICOM pixel array shape {arr.shape} for SamplesPerPixel={samples}"
        )
    return arr


def _minmax(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 scaled to [0, 1] by its min and max (all zeros for a constant image)."""
    out = arr.astype(np.float32)
    lo = float(out.min())
    hi = float(out.max())
    if hi > lo:
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
    else:
        out.fill(0.0)
    return out


def _has_voi_lut_sequence(ds: Dataset) -> bool:
    """Whether the data set has a VOI LUT sequence whose first item holds a descriptor and data."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return False
    item = seq[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _dicom_to_grey(arr: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """Grey [0, 1] float32 pixels of a frame: modality LUT, then VOI LUT or window, else min-max.

    A VOI LUT or window that fails is logged and replaced by min-max scaling; MONOCHROME1 is inverted.
    Colour and palette images go to ``_dicom_colour_to_grey``.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        return _dicom_colour_to_grey(arr, ds, photometric)

    apply_modality_lut, apply_voi_lut = _dicom_lut_functions()
    values = apply_modality_lut(arr, ds)
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    out: np.ndarray | None = None
    if _has_voi_lut_sequence(ds):
        try:
            out = _minmax(apply_voi_lut(values, ds, index=0))
        except Exception as exc:
            logger.warning("%s: cannot apply the VOI LUT (%s); using a min-max scale instead", name, exc)
    elif has_window:
        try:
            out = _apply_window(values, ds, apply_voi_lut)
        except Exception as exc:
            logger.warning("%s: cannot apply the window (%s); using a min-max scale instead", name, exc)
    if out is None:
        out = _minmax(values)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    return out


def _apply_window(values: np.ndarray, ds: Dataset, apply_voi_lut: Callable[..., np.ndarray]) -> np.ndarray:
    """Apply WindowCenter/Width through pydicom and map the window's output range onto [0, 1]."""
    windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    # The output range pydicom maps the window onto: the values far below / above the window.
    with np.errstate(over="ignore", invalid="ignore"):
        probe = np.asarray(apply_voi_lut(np.array([-1e15, 1e15]), ds, index=0), dtype=np.float64)
    y_lo, y_hi = float(probe[0]), float(probe[1])
    if not np.isfinite([y_lo, y_hi]).all() or y_hi == y_lo:
        return _minmax(windowed)
    if windowed is values:
        windowed = windowed.copy()
    windowed -= y_lo
    windowed /= y_hi - y_lo
    np.clip(windowed, 0.0, 1.0, out=windowed)
    return windowed.astype(np.float32)


def _dicom_colour_to_grey(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """Grey [0, 1] of a colour frame by luma weights.

    Palette images go through the colour LUT and are min-max scaled; others are divided by the full range of BitsStored.
    """
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut
        except ImportError:  # pydicom < 3
            from pydicom.pixel_data_handlers.util import apply_color_lut  # type: ignore[no-redef]
        rgb = apply_color_lut(arr, ds)
        return _minmax(rgb[..., :3].astype(np.float32) @ LUMA)
    grey = arr[..., :3].astype(np.float32) @ LUMA
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    grey /= np.float32(2**bits - 1)
    np.clip(grey, 0.0, 1.0, out=grey)
    return grey

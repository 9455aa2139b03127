"""Tests of deeppneumonia.data.readers.dicom (through the imageio entry points): LUTs, windows, MONOCHROME1,
transfer syntaxes without decoders, frame 0, colour, preamble-less files."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deeppneumonia.data.imageio import ImageInfo, detect_format, probe_image, read_image, read_image_bytes
from deeppneumonia.errors import ImageReadError, UnsupportedTransferSyntaxError


def _pydicom() -> Any:
    return pytest.importorskip("pydicom")


def _dicom_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str | None = None,
    **elements: Any,
) -> Any:
    """An uncompressed (or, with ``transfer_syntax``, pretend-compressed) DICOM dataset."""
    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax) if transfer_syntax else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    frames = pixels if pixels.ndim == 3 and pixels.shape[-1] != 3 else pixels[None]
    rgb = (pixels.ndim == 3 and pixels.shape[-1] == 3) or pixels.ndim == 4
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if len(frames) > 1 and pixels.ndim == 3 and not rgb:
        ds.NumberOfFrames = len(frames)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if transfer_syntax is None:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    else:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\x00\x01garbage-not-a-codestream\x00"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if int(pydicom.__version__.split(".")[0]) < 3:
        ds.is_little_endian = True
        ds.is_implicit_VR = False
    return ds


def _save_dicom(ds: Any, path: Path) -> Path:
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.save_as(path, write_like_original=False)
    return path


def _ramp12(h: int = 8, w: int = 16) -> np.ndarray:
    return np.linspace(0, 4095, h * w).round().astype(np.uint16).reshape(h, w)


def test_dicom_monochrome2(tmp_path: Path) -> None:
    arr = _ramp12()
    path = _save_dicom(_dicom_dataset(arr), tmp_path / "m2.dcm")
    assert detect_format(path) == "DICOM"
    img = read_image(path)
    assert img.pixels.shape == arr.shape
    assert img.pixels.dtype == np.float32
    assert img.pixels[0, 0] == 0.0 and img.pixels[-1, -1] == 1.0  # min-max without a window
    np.testing.assert_allclose(img.pixels, arr / 4095.0, atol=1e-6)
    assert img.info == ImageInfo(format="DICOM", width=16, height=8, channels=1, bit_depth=12)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    arr = _ramp12()
    m2 = read_image(_save_dicom(_dicom_dataset(arr), tmp_path / "m2.dcm")).pixels
    m1 = read_image(_save_dicom(_dicom_dataset(arr, photometric="MONOCHROME1"), tmp_path / "m1.dcm")).pixels
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == 1.0  # lowest stored value is displayed white in MONOCHROME1


def test_dicom_rescale_and_window(tmp_path: Path) -> None:
    # Stored 0..4095; modality value = 2 * stored - 1000; window 0 +- 100 in modality units.
    arr = np.array([[0, 400, 475, 500, 525, 600, 4095]], dtype=np.uint16)
    ds = _dicom_dataset(arr, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=200)
    img = read_image(_save_dicom(ds, tmp_path / "ct.dcm"))
    px = img.pixels[0]
    assert px[0] == 0.0 and px[1] == 0.0  # below the window: clipped
    assert px[5] == 1.0 and px[6] == 1.0  # above the window: clipped
    assert px[3] == pytest.approx(0.5, abs=0.01)  # stored 500 -> modality 0 = centre
    assert px[2] == pytest.approx(0.25, abs=0.01)
    assert px[4] == pytest.approx(0.75, abs=0.01)
    # Without the rescale, the same window would put every pixel but 0 above it.
    ds_raw = _dicom_dataset(arr, WindowCenter=0, WindowWidth=200)
    raw = read_image(_save_dicom(ds_raw, tmp_path / "raw.dcm")).pixels[0]
    assert (raw[1:] == 1.0).all()


def test_dicom_window_clips(tmp_path: Path) -> None:
    arr = _ramp12(16, 16)
    ds = _dicom_dataset(arr, WindowCenter=2048, WindowWidth=1024)
    px = read_image(_save_dicom(ds, tmp_path / "win.dcm")).pixels
    below = arr <= 1536
    above = arr >= 2560
    assert (px[below] == 0.0).all()
    assert (px[above] == 1.0).all()
    inside = ~below & ~above
    assert inside.any() and ((px[inside] > 0) & (px[inside] < 1)).all()
    # Monotonic in the stored value.
    order = np.argsort(arr, axis=None, kind="stable")
    assert (np.diff(px.ravel()[order]) >= 0).all()


def test_dicom_window_one_sided_keeps_window_meaning(tmp_path: Path) -> None:
    # All pixels in the lower half of the window: no stretch to 1.0 (not a plain min-max).
    arr = np.array([[100, 200, 300]], dtype=np.uint16)
    ds = _dicom_dataset(arr, WindowCenter=1000, WindowWidth=2000)
    px = read_image(_save_dicom(ds, tmp_path / "w.dcm")).pixels[0]
    assert float(px.max()) < 0.2
    np.testing.assert_allclose(px, [0.05, 0.10, 0.15], atol=0.002)  # window spans 0..2000


def test_dicom_rescale_without_window_is_minmax(tmp_path: Path) -> None:
    arr = _ramp12()
    ds = _dicom_dataset(arr, RescaleSlope=3, RescaleIntercept=-1024)
    img = read_image(_save_dicom(ds, tmp_path / "r.dcm"))
    np.testing.assert_allclose(img.pixels, arr / 4095.0, atol=1e-6)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = _dicom_dataset(_ramp12())
    del ds.PixelData
    path = _save_dicom(ds, tmp_path / "nopix.dcm")
    with pytest.raises(ImageReadError, match=r"nopix\.dcm.*no pixel data"):
        read_image(path)


def test_dicom_compressed_garbage_raises_naming_syntax(tmp_path: Path) -> None:
    from pydicom.uid import JPEGLSLossless

    ds = _dicom_dataset(_ramp12(), transfer_syntax=JPEGLSLossless)
    path = _save_dicom(ds, tmp_path / "jls.dcm")
    with pytest.raises(ImageReadError, match=r"jls\.dcm") as exc_info:
        read_image(path)
    message = str(exc_info.value)
    assert "1.2.840.10008.1.2.4.80" in message
    assert "JPEG-LS" in message
    if isinstance(exc_info.value, UnsupportedTransferSyntaxError):  # no plugin installed here
        assert "pylibjpeg" in message or "gdcm" in message


@pytest.mark.parametrize(
    ("uid", "label"),
    [
        ("1.2.840.10008.1.2.4.100", "MPEG2"),  # no pixel decoder exists in pydicom at all
        ("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000"),  # decoder needs pylibjpeg-openjpeg
    ],
)
def test_dicom_syntax_without_decoder(tmp_path: Path, uid: str, label: str) -> None:
    ds = _dicom_dataset(_ramp12(), transfer_syntax=uid)
    path = _save_dicom(ds, tmp_path / "compressed.dcm")
    with pytest.raises(ImageReadError) as exc_info:
        read_image(path)
    message = str(exc_info.value)
    assert "compressed.dcm" in message
    assert uid in message
    assert label in message
    if isinstance(exc_info.value, UnsupportedTransferSyntaxError):
        assert "Install" in message


def test_dicom_missing_plugin_is_unsupported_syntax_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels_mod = pytest.importorskip("pydicom.pixels")
    if not hasattr(pixels_mod, "get_decoder"):
        pytest.skip("pydicom < 3 has no get_decoder")
    from pydicom.uid import JPEG2000Lossless

    class _NoPlugins:
        is_available = False
        missing_dependencies = ("pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0",)

    monkeypatch.setattr(pixels_mod, "get_decoder", lambda uid: _NoPlugins())
    path = _save_dicom(_dicom_dataset(_ramp12(), transfer_syntax=JPEG2000Lossless), tmp_path / "j2k.dcm")
    with pytest.raises(UnsupportedTransferSyntaxError) as exc_info:
        read_image(path)
    message = str(exc_info.value)
    assert "j2k.dcm" in message
    assert "1.2.840.10008.1.2.4.90" in message and "JPEG 2000" in message
    assert "pylibjpeg-openjpeg" in message and "python-gdcm" in message


def test_dicom_read_bytes_matches_read_file(tmp_path: Path) -> None:
    ds = _dicom_dataset(_ramp12(), photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=3000)
    path = _save_dicom(ds, tmp_path / "x.dcm")
    from_file = read_image(path)
    from_bytes = read_image_bytes(path.read_bytes(), name="x.dcm")
    np.testing.assert_array_equal(from_file.pixels, from_bytes.pixels)
    assert from_file.info == from_bytes.info


def test_dicom_probe(tmp_path: Path) -> None:
    from pydicom.uid import JPEGLSLossless

    path = _save_dicom(_dicom_dataset(_ramp12(6, 10)), tmp_path / "p.dcm")
    assert probe_image(path) == ImageInfo(format="DICOM", width=10, height=6, channels=1, bit_depth=12)
    # Header only: the (undecodable) pixel data is never touched.
    garbage = _save_dicom(_dicom_dataset(_ramp12(), transfer_syntax=JPEGLSLossless), tmp_path / "g.dcm")
    assert probe_image(garbage).width == 16


def test_dicom_dims_guard(tmp_path: Path) -> None:
    path = _save_dicom(_dicom_dataset(_ramp12(20, 30)), tmp_path / "big.dcm")
    with pytest.raises(ImageReadError, match=r"big\.dcm.*max_pixels"):
        read_image(path, max_pixels=500)
    with pytest.raises(ImageReadError, match=r"big\.dcm.*max_side"):
        read_image(path, max_side=25)


def test_dicom_multiframe_takes_frame0(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = np.stack([_ramp12(), 4095 - _ramp12(), np.zeros((8, 16), np.uint16)])
    path = _save_dicom(_dicom_dataset(frames), tmp_path / "multi.dcm")
    with caplog.at_level(logging.WARNING, logger="deeppneumonia.data.imageio"):
        img = read_image(path)
    assert img.pixels.shape == (8, 16)
    np.testing.assert_allclose(img.pixels, _ramp12() / 4095.0, atol=1e-6)
    assert any("frame 0" in r.getMessage() and "multi.dcm" in r.getMessage() for r in caplog.records)


def test_dicom_rgb_becomes_grey(tmp_path: Path) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    rgb[0, 0] = (255, 255, 255)
    path = _save_dicom(_dicom_dataset(rgb, bits_stored=8), tmp_path / "rgb.dcm")
    img = read_image(path)
    assert img.pixels.shape == (4, 5)
    assert img.pixels[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert img.pixels[1, 1] == pytest.approx(0.299, abs=1e-3)
    assert img.info.channels == 3 and img.info.bit_depth == 8


def test_dicom_without_preamble(tmp_path: Path) -> None:
    pydicom = _pydicom()
    if int(pydicom.__version__.split(".")[0]) < 3:
        pytest.skip("writing preamble-less files differs in pydicom < 3")
    arr = _ramp12()
    ds = _dicom_dataset(arr)
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    dcm = tmp_path / "bare.dcm"
    dcm.write_bytes(data)
    assert detect_format(dcm) == "DICOM"
    np.testing.assert_allclose(read_image(dcm).pixels, arr / 4095.0, atol=1e-6)
    np.testing.assert_allclose(read_image_bytes(data, name="bare.dcm").pixels, arr / 4095.0, atol=1e-6)
    other = tmp_path / "bare.bin"
    other.write_bytes(data)
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(other)

"""The bad-input corpus (issue 21): every case is generated here (no ../shared), counted, and asserted.

Each case builds a bad input beside good ones in a tmp folder and checks, as applicable: the exit code of
``deeppneumonia.cli.main`` (2 for a user error) or the exception type, that the message names the file (and
row), that no traceback is printed, and that the good inputs beside the bad one are still processed.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deeppneumonia.cli import main
from deeppneumonia.config import load_config
from deeppneumonia.data.cache import resize_image
from deeppneumonia.data.imageio import probe_image, read_image, read_image_bytes
from deeppneumonia.data.manifest import Manifest
from deeppneumonia.data.sources import load_source
from deeppneumonia.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
)
from deeppneumonia.models.checkpoint import load_state, remove_stale_temps, save_weights
from tests.conftest import make_siim, save_grey

Case = Callable[[Path, pytest.CaptureFixture[str]], None]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["-q", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def png(path: Path, w: int = 20, h: int = 20, seed: int = 0) -> Path:
    save_grey(path, np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8))
    return path


def jpeg_bytes(w: int = 24, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(w * h) % 251).astype(np.uint8).reshape(h, w)).save(buf, "JPEG")
    return buf.getvalue()


def generic(tmp: Path, body: bytes | str, n_good: int = 3, header: str = "path,label\n") -> Path:
    """A generic CSV: ``n_good`` good rows (img/0..n-1.png, labels a/b) then ``body``."""
    for i in range(max(n_good, 4)):
        png(tmp / "img" / f"{i}.png", seed=i)
    good = "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(n_good))
    data = (header + good).encode() + (body.encode() if isinstance(body, str) else body)
    path = tmp / "data.csv"
    path.write_bytes(data)
    return path


def inspect_ok(capsys: pytest.CaptureFixture[str], path: Path, images: int, *expect: str) -> str:
    """`data inspect` succeeds, processes ``images`` good images and reports each of ``expect``."""
    rc, out, err = cli(capsys, "data", "inspect", str(path), "--no-decode", "--max-problems", "1000")
    assert rc == 0, err
    assert re.search(rf"^images: {images}\b", out, re.M), out
    for e in expect:
        assert e in out, (e, out)
    return out


def strict_fails(capsys: pytest.CaptureFixture[str], path: Path, *expect: str) -> None:
    rc, _, err = cli(capsys, "data", "inspect", str(path), "--no-decode", "--strict")
    assert rc == 2
    for e in expect:
        assert e in err, (e, err)


def raises(exc: type[BaseException], fn: Callable[..., Any], *args: Any, match: str = "", **kw: Any) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    assert match in str(info.value), str(info.value)
    return str(info.value)


def dicom(path: Path, rows: int, cols: int, fragment: bytes | None = None, ts: str | None = None,
          pixels: bytes | None = None, deflated: bool = False) -> Path:
    from pydicom.encaps import encapsulate
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.data.readers.test_dicom import _dicom_dataset, _save_dicom

    ds = _dicom_dataset(np.zeros((rows, cols), np.uint8), bits_stored=8, transfer_syntax=ts)
    if fragment is not None:
        ds.PixelData = encapsulate([fragment])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    if pixels is not None:
        ds.PixelData = pixels
    if deflated:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save_dicom(ds, path)  # type: ignore[no-any-return]


def sof_bomb(data: bytes, marker: bytes = b"\xff\xc0", w: int = 20000, h: int = 20000) -> bytes:
    i = data.find(marker)
    out = bytearray(data)
    struct.pack_into(">HH", out, i + 5, h, w)
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# generic CSV: one reader, file:row for every malformed row, the good rows still read
# --------------------------------------------------------------------------------------------------


@case
def case_csv_quoted_header(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, '"img/3.png","b"\n', header='"path","label"\n')
    inspect_ok(capsys, path, 4)


@case
def case_csv_header_only(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "", n_good=0)
    assert len(load_source(path)) == 0
    cfg = load_config(None, [f"data.path={path}", f"data.cache_dir={tmp / 'c'}", f"run.out_dir={tmp / 'r'}"])
    from deeppneumonia.training.pipeline import prepare_data

    raises(DataError, prepare_data, cfg, False, match="no usable images")


@case
def case_csv_empty_file(tmp: Path, capsys: Any) -> None:
    (tmp / "e.csv").write_bytes(b"")
    rc, _, err = cli(capsys, "data", "inspect", str(tmp / "e.csv"))
    assert rc == 2 and "e.csv" in err and "empty CSV" in err


@case
def case_csv_latin1_byte(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, b"img/3.png,caf\xe9\n")
    inspect_ok(capsys, path, 3, "data.csv:5", "0xe9", "not UTF-8")


@case
def case_csv_latin1_header(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "", header="path,l\xe4bel\n".encode("latin-1").decode("latin-1"))
    path.write_bytes(path.read_bytes().replace("ä".encode(), b"\xe4"))
    rc, _, err = cli(capsys, "data", "inspect", str(path))
    assert rc == 2 and "data.csv:1" in err and "0xe4" in err


@case
def case_csv_nul_byte(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, b"img/\x003.png,b\n")
    inspect_ok(capsys, path, 3, "data.csv:5", "NUL byte")


@case
def case_csv_nul_byte_strict(tmp: Path, capsys: Any) -> None:
    strict_fails(capsys, generic(tmp, b"img/\x003.png,b\n"), "data.csv:5", "NUL byte")


@case
def case_csv_field_over_limit(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "img/3.png," + "x" * 200_000 + "\nimg/3.png,b\n")
    inspect_ok(capsys, path, 4, "data.csv:5", "field larger than field limit")


@case
def case_csv_duplicate_header_column(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "", header="path,label,label\n")
    rc, _, err = cli(capsys, "data", "inspect", str(path))
    assert rc == 2 and "data.csv:1" in err and "'label' appears more than once" in err


@case
def case_csv_missing_label_column(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "", header="path,klass\n")
    rc, _, err = cli(capsys, "data", "inspect", str(path))
    assert rc == 2 and "data.csv" in err and "label" in err


@case
def case_csv_missing_path_column(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "", header="file,label\n")
    rc, _, err = cli(capsys, "data", "inspect", str(path))
    assert rc == 2 and "data.csv" in err and "'path'" in err


@case
def case_csv_absolute_path(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, f"{tmp / 'img' / '3.png'},b\n"), 3, "data.csv:5", "bad_path")


@case
def case_csv_dotdot_path(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, "../../etc/passwd,b\n"), 3, "data.csv:5", "bad_path")


@case
def case_csv_missing_image(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, "img/nope.png,b\n"), 3, "data.csv:5", "missing_file")


@case
def case_csv_empty_label(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, "img/3.png,\n"), 3, "data.csv:5", "missing_label")


@case
def case_csv_directory_as_image(tmp: Path, capsys: Any) -> None:
    (tmp / "img" / "d.png").mkdir(parents=True)
    inspect_ok(capsys, generic(tmp, "img/d.png,b\n"), 3, "data.csv:5", "not a regular file")


@case
def case_csv_duplicate_row(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, "img/0.png,a\n"), 3, "data.csv:5", "duplicate")


@case
def case_csv_bad_boxes_json(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, 'img/3.png,b,"[[1, 2"\n', header="path,label,boxes\n")
    path.write_text(path.read_text().replace(",a\n", ",a,\n").replace(",b\n", ",b,\n"))
    inspect_ok(capsys, path, 4, "data.csv:5", "cannot parse boxes")


@case
def case_csv_deeply_nested_boxes(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "img/3.png,b," + "[" * 50_000 + "\n", header="path,label,boxes\n")
    inspect_ok(capsys, path, 4, "data.csv:5", "cannot parse boxes")


@case
def case_csv_nan_box(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, 'img/3.png,b,"[[NaN, 1, 2, 3]]"\n', header="path,label,boxes\n")
    inspect_ok(capsys, path, 4, "data.csv:5", "non-finite")


@case
def case_csv_inf_class_cell(tmp: Path, capsys: Any) -> None:
    for i in range(3):
        png(tmp / "img" / f"{i}.png", seed=i)
    path = tmp / "ml.csv"
    path.write_text("path,A,B\nimg/0.png,1,0\nimg/1.png,inf,1\nimg/2.png,0,nan\n")
    m = load_source(path, classes=("A", "B"))
    assert len(m) == 2 and any(p.row == 3 and p.kind == "bad_label" and "ml.csv" in p.file for p in m.problems)


@case
def case_csv_bom_crlf_blank_lines(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "\r\n\r\nimg/3.png,b\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"))
    inspect_ok(capsys, path, 4)


@case
def case_csv_short_and_long_rows(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, generic(tmp, "img/3.png,b,extra,cells\nimg/nolabel.png\n"), 4, "missing_label")


@case
def case_csv_unknown_label_with_classes(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "img/3.png,zebra\n")
    m = load_source(path, classes=("a", "b"))
    assert len(m) == 3 and any(p.kind == "unknown_label" and p.row == 5 for p in m.problems)


# --------------------------------------------------------------------------------------------------
# SIIM, covid-chestxray, NIH, class-per-folder
# --------------------------------------------------------------------------------------------------


def siim_with(tmp: Path, fix: Callable[[str], str], name: str) -> Manifest:
    root = make_siim(tmp / "siim")
    path = root / name
    path.write_text(fix(path.read_text()))
    return load_source(root)


@case
def case_siim_original_width_zero(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("a1,P1,1000,2000", "a1,P1,0,2000"), "image_meta.csv")
    assert {r.image_id for r in m.records} == {"a2", "b1", "c1", "d1"}
    assert any(p.kind == "bad_meta" and p.row == 2 and "must be greater than 0" in p.message for p in m.problems)


@case
def case_siim_original_height_negative(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("b1,P2,500,500", "b1,P2,500,-5"), "image_meta.csv")
    assert "b1" not in {r.image_id for r in m.records} and len(m) == 4


@case
def case_siim_original_width_nan(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("b1,P2,500,500", "b1,P2,nan,500"), "image_meta.csv")
    assert len(m) == 4 and any("not a finite number" in p.message for p in m.problems)


@case
def case_siim_one_hot_inf(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("s2_study,1,0,0,0", "s2_study,inf,0,0,0"), "train_study_level.csv")
    assert "b1" not in {r.image_id for r in m.records} and len(m) == 4
    assert any(p.kind == "bad_label" and p.row == 3 and "train_study_level.csv" in p.file for p in m.problems)


@case
def case_siim_one_hot_nan(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("s2_study,1,0,0,0", "s2_study,nan,0,0,0"), "train_study_level.csv")
    assert len(m) == 4 and any(p.kind == "bad_label" for p in m.problems)


@case
def case_siim_box_literal_is_not_executed(tmp: Path, capsys: Any) -> None:
    flag = tmp / "pwned"
    code = f"__import__('pathlib').Path('{flag}').touch()"
    m = siim_with(tmp, lambda t: t.replace("b1_image,,", f'b1_image,"{code}",'), "train_image_level.csv")
    assert not flag.exists() and len(m) == 5 and any(p.kind == "bad_box" for p in m.problems)


@case
def case_siim_deeply_nested_boxes(tmp: Path, capsys: Any) -> None:
    m = siim_with(tmp, lambda t: t.replace("b1_image,,", "b1_image," + "[" * 50_000 + ","), "train_image_level.csv")
    assert len(m) == 5 and any(p.kind == "bad_box" for p in m.problems)


@case
def case_siim_latin1_row(tmp: Path, capsys: Any) -> None:
    root = make_siim(tmp / "siim")
    path = root / "train_image_level.csv"
    path.write_bytes(path.read_bytes().replace(b"b1_image", b"b1_\xe9mage"))
    rc, out, _ = cli(capsys, "data", "inspect", str(root), "--no-decode", "--max-problems", "100")
    assert rc == 0 and "train_image_level.csv:4" in out and "0xe9" in out and re.search(r"^images: 4\b", out, re.M)


def covid(tmp: Path, bad_row: str) -> Path:
    root = tmp / "covid"
    for i in range(3):
        png(root / "images" / f"{i}.png", seed=i)
    png(tmp / "outside.png")
    rows = "".join(f"p{i},Pneumonia/Viral/{'AB'[i % 2]},PA,X-ray,{i}.png,images\n" for i in range(3))
    (root / "metadata.csv").write_text("patientid,finding,view,modality,filename,folder\n" + rows + bad_row)
    return root


@case
def case_covid_absolute_folder(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, covid(tmp, f"p9,Pneumonia/Viral/A,PA,X-ray,outside.png,{tmp}\n"), 3, "metadata.csv:5", "bad_path")


@case
def case_covid_dotdot_folder(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, covid(tmp, "p9,Pneumonia/Viral/A,PA,X-ray,outside.png,../..\n"), 3, "metadata.csv:5",
               "bad_path")


@case
def case_covid_dotdot_filename(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, covid(tmp, "p9,Pneumonia/Viral/A,PA,X-ray,../../outside.png,images\n"), 3,
               "metadata.csv:5", "bad_path")


def nih(tmp: Path, box_rows: str = "", label_rows: str = "",
        box_header: str = "Image Index,Finding Label,x,y,w,h\n") -> Path:
    root = tmp / "nih"
    for i in range(3):
        png(root / "images" / f"{i}.png", seed=i)
    (root / "labels.csv").write_text("Image Index,Finding Labels,Patient ID\n0.png,No Finding,1\n1.png,Mass,2\n"
                                     "2.png,Effusion|Mass,3\n" + label_rows)
    (root / "boxes.csv").write_text(box_header + "1.png,Mass,1,1,5,5\n" + box_rows)
    return root


@case
def case_nih_inf_box(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, nih(tmp, box_rows="2.png,Mass,inf,1,5,5\n"), 3, "boxes.csv:3", "non-finite")


@case
def case_nih_unknown_finding(tmp: Path, capsys: Any) -> None:
    inspect_ok(capsys, nih(tmp, label_rows="0.png,Banana,9\n"), 3, "labels.csv:5", "unknown_label")


@case
def case_nih_duplicate_box_header(tmp: Path, capsys: Any) -> None:
    rc, _, err = cli(capsys, "data", "inspect", str(nih(tmp, box_header="Image Index,Finding Label,x,y,w,h,x\n")))
    assert rc == 2 and "boxes.csv:1" in err and "'x'" in err


def folder(tmp: Path, classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA"), n: int = 3) -> Path:
    root = tmp / "folder"
    for c in classes:
        for i in range(n):
            png(root / c / f"person{i}_{c}.png", seed=i)
    return root


@case
def case_folder_empty_class(tmp: Path, capsys: Any) -> None:
    root = folder(tmp)
    (root / "COVID").mkdir()
    inspect_ok(capsys, root, 6, "empty_class", "COVID")
    from deeppneumonia.data.splits import patient_split
    from deeppneumonia.training.pipeline import check_training_data

    m = load_source(root)
    raises(DataError, check_training_data, m, patient_split(m, 0.3, 0.0), str(root), match="['COVID']")


@case
def case_folder_symlink_loop(tmp: Path, capsys: Any) -> None:
    root = folder(tmp)
    os.symlink("loop.png", root / "NORMAL" / "loop.png")
    os.symlink(root / "LOOPDIR", root / "LOOPDIR")
    inspect_ok(capsys, root, 6, "loop.png")


@case
def case_folder_one_class(tmp: Path, capsys: Any) -> None:
    from deeppneumonia.data.splits import patient_split
    from deeppneumonia.training.pipeline import check_training_data

    root = folder(tmp, ("NORMAL",), n=6)
    m = load_source(root)
    raises(DataError, check_training_data, m, patient_split(m, 0.3, 0.0), str(root), match="one class only")


@case
def case_folder_fake_png(tmp: Path, capsys: Any) -> None:
    root = folder(tmp)
    (root / "NORMAL" / "fake.png").write_text("hello")
    inspect_ok(capsys, root, 6, "fake.png", "not an image")


@case
def case_folder_zero_byte_image(tmp: Path, capsys: Any) -> None:
    root = folder(tmp)
    (root / "NORMAL" / "zero.png").write_bytes(b"")
    inspect_ok(capsys, root, 6, "zero.png", "empty file")


@case
def case_inspect_single_image(tmp: Path, capsys: Any) -> None:
    rc, out, _ = cli(capsys, "data", "inspect", str(png(tmp / "one.png")))
    assert rc == 0 and re.search(r"^images: 1\b", out, re.M)


@case
def case_inspect_missing_path(tmp: Path, capsys: Any) -> None:
    rc, _, err = cli(capsys, "data", "inspect", str(tmp / "nope"))
    assert rc == 2 and "not found" in err


@case
def case_inspect_non_image_file(tmp: Path, capsys: Any) -> None:
    (tmp / "notes.txt").write_text("hi")
    rc, _, err = cli(capsys, "data", "inspect", str(tmp / "notes.txt"))
    assert rc == 2 and "notes.txt" in err


# --------------------------------------------------------------------------------------------------
# image content: PNG, JPEG, DICOM (one guard in the decoder for every container)
# --------------------------------------------------------------------------------------------------


@case
def case_png_truncated(tmp: Path, capsys: Any) -> None:
    data = png(tmp / "a.png", 64, 64).read_bytes()
    (tmp / "t.png").write_bytes(data[: len(data) // 2])
    raises(ImageReadError, read_image, tmp / "t.png", match="truncated")


@case
def case_jpeg_truncated(tmp: Path, capsys: Any) -> None:
    (tmp / "t.jpg").write_bytes(jpeg_bytes(64, 64)[:300])
    raises(ImageReadError, read_image, tmp / "t.jpg", match="t.jpg")


def cut_scan(data: bytes, keep: float) -> bytes:
    """``data`` with its last scan cut to ``keep`` of its coded bytes and an end-of-image marker appended."""
    start = data.rfind(b"\xff\xda")
    start += 2 + struct.unpack_from(">H", data, start + 2)[0]
    return data[:start + int((data.rfind(b"\xff\xd9") - start) * keep)] + b"\xff\xd9"


@case
def case_jpeg_short_scan_with_eoi(tmp: Path, capsys: Any) -> None:
    # libjpeg fills the missing blocks silently when a marker ends the scan early: 99 % of this image is invented.
    (tmp / "s.jpg").write_bytes(cut_scan(jpeg_bytes(256, 256), 0.01))
    raises(ImageReadError, read_image, tmp / "s.jpg", match="s.jpg: truncated JPEG file: scan 0")


@case
def case_dicom_embedded_jpeg_short_scan(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    path = dicom(tmp / "s.dcm", 256, 256, cut_scan(jpeg_bytes(256, 256), 0.01), JPEGBaseline8Bit)
    raises(ImageReadError, read_image, path, match="(embedded JPEG image): truncated JPEG file: scan 0")


@case
def case_text_named_jpg(tmp: Path, capsys: Any) -> None:
    (tmp / "x.jpg").write_text("not an image at all")
    raises(NotAnImageError, read_image, tmp / "x.jpg", match="x.jpg")


@case
def case_png_header_bomb(tmp: Path, capsys: Any) -> None:
    data = bytearray(png(tmp / "a.png").read_bytes())
    struct.pack_into(">II", data, 16, 100_000, 100_000)
    (tmp / "bomb.png").write_bytes(bytes(data))
    raises(ImageTooLargeError, read_image, tmp / "bomb.png", match="bomb.png")


@case
def case_jpeg_sof_bomb(tmp: Path, capsys: Any) -> None:
    (tmp / "bomb.jpg").write_bytes(sof_bomb(jpeg_bytes()))
    raises(ImageTooLargeError, read_image, tmp / "bomb.jpg", match="bomb.jpg")


@case
def case_dicom_embedded_jpeg_bomb(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    path = dicom(tmp / "b.dcm", 16, 24, sof_bomb(jpeg_bytes()), JPEGBaseline8Bit)
    assert path.stat().st_size < 4096
    raises(ImageTooLargeError, read_image, path, match="embedded JPEG")
    raises(ImageTooLargeError, read_image_bytes, path.read_bytes(), name="upload.dcm", match="upload.dcm")


@case
def case_dicom_embedded_jpeg_mismatch(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    path = dicom(tmp / "m.dcm", 8, 8, jpeg_bytes(), JPEGBaseline8Bit)
    raises(ImageReadError, read_image, path, match="the DICOM header says 8x8")


@case
def case_dicom_embedded_jpeg_ok(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    pytest.importorskip("libjpeg")
    assert read_image(dicom(tmp / "ok.dcm", 16, 24, jpeg_bytes(), JPEGBaseline8Bit)).pixels.shape == (16, 24)


@case
def case_dicom_embedded_jpeg_ls_bomb(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGLSLossless

    sof55 = b"\xff\xd8\xff\xf7\x00\x0b\x08" + struct.pack(">HH", 30000, 30000) + b"\x01\x01\x11\x00\xff\xda\x00\x08"
    raises(ImageTooLargeError, read_image, dicom(tmp / "ls.dcm", 16, 16, sof55, JPEGLSLossless), match="JPEG-LS")


@case
def case_dicom_embedded_j2k_bomb(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEG2000Lossless

    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIIIIIII", 50000, 50000, 0, 0, 50000, 50000, 0, 0)
    raises(ImageTooLargeError, read_image, dicom(tmp / "j2k.dcm", 16, 16, siz + b"\x00" * 16, JPEG2000Lossless),
           match="JPEG 2000")


@case
def case_dicom_embedded_garbage(tmp: Path, capsys: Any) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    raises(ImageReadError, read_image, dicom(tmp / "g.dcm", 16, 16, b"\x00garbage", JPEGBaseline8Bit), match="g.dcm")


@case
def case_dicom_deflated_bomb(tmp: Path, capsys: Any) -> None:
    path = dicom(tmp / "d.dcm", 16, 16, pixels=bytes(16 * 2**20), deflated=True)
    assert path.stat().st_size < 100_000
    raises(ImageTooLargeError, read_image, path, match="deflated")
    raises(ImageTooLargeError, probe_image, path, match="deflated")


@case
def case_dicom_deflated_ok(tmp: Path, capsys: Any) -> None:
    path = dicom(tmp / "d.dcm", 16, 24, pixels=bytes(range(256)) * 1 + bytes(16 * 24 - 256), deflated=True)
    assert read_image(path).pixels.shape == (16, 24) and probe_image(path).width == 24


@case
def case_dicom_huge_rows(tmp: Path, capsys: Any) -> None:
    path = dicom(tmp / "h.dcm", 16, 16)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows = ds.Columns = 60000
    ds.save_as(path)
    raises(ImageTooLargeError, read_image, path, match="h.dcm")


@case
def case_dicom_without_pixels(tmp: Path, capsys: Any) -> None:
    from pydicom import dcmread

    path = dicom(tmp / "n.dcm", 16, 16)
    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    raises(ImageReadError, read_image, path, match="no pixel data")


@case
def case_dicom_bomb_in_folder_is_skipped(tmp: Path, capsys: Any) -> None:
    root = folder(tmp)
    dicom(root / "NORMAL" / "bomb.dcm", 16, 16, pixels=bytes(16 * 2**20), deflated=True)
    inspect_ok(capsys, root, 6, "bomb.dcm", "decompression-bomb")


# --------------------------------------------------------------------------------------------------
# resize on extreme aspect ratios
# --------------------------------------------------------------------------------------------------


@case
def case_resize_1x300_letterbox(tmp: Path, capsys: Any) -> None:
    assert resize_image(np.ones((1, 300), np.float32), 32, "letterbox").shape == (32, 32)


@case
def case_resize_300x1_letterbox(tmp: Path, capsys: Any) -> None:
    out = resize_image(np.ones((300, 1), np.float32), 32, "letterbox")
    assert out.shape == (32, 32) and out.any()


@case
def case_resize_1x300_squash(tmp: Path, capsys: Any) -> None:
    assert resize_image(np.ones((1, 300), np.float32), 32, "squash").shape == (32, 32)


@case
def case_prepare_thin_image(tmp: Path, capsys: Any) -> None:
    path = generic(tmp, "img/thin.png,b\n")
    png(tmp / "img" / "thin.png", 300, 1)
    rc, out, _ = cli(capsys, "data", "prepare", str(path), "--size", "32", "--resize", "letterbox", "--cache-dir",
                     str(tmp / "cache"), "--workers", "1")
    assert rc == 0 and "4 ready" in out and "0 skipped" in out


# --------------------------------------------------------------------------------------------------
# degenerate training: one validation of the config's ranges, refused before any data is read
# --------------------------------------------------------------------------------------------------


def _config_case(override: str, key: str) -> Case:
    def run(tmp: Path, capsys: Any) -> None:
        raises(ConfigError, load_config, "quick", [override], match=key)
        rc, _, err = cli(capsys, "train", "-c", "quick", override, f"run.out_dir={tmp / 'run'}")
        assert rc == 2 and key in err and "invalid configuration" in err
        assert not (tmp / "run").exists()  # refused before anything was written

    return run


for _name, _override, _key in [
    ("batch_size_negative", "train.optim.batch_size=-4", "train.optim.batch_size"),
    ("batch_size_zero", "train.optim.batch_size=0", "train.optim.batch_size"),
    ("epochs_zero", "train.optim.epochs=0", "train.optim.epochs"),
    ("epochs_negative", "pretrain.optim.epochs=-1", "pretrain.optim.epochs"),
    ("momentum_negative", "train.optim.momentum=-1", "train.optim.momentum"),
    ("lr_zero", "train.optim.lr=0", "train.optim.lr"),
    ("lr_nan", "train.optim.lr=.nan", "train.optim.lr"),
    ("val_fraction_zero", "data.val_fraction=0", "data.val_fraction"),
    ("test_fraction_one", "data.test_fraction=1", "data.test_fraction"),
    ("size_zero", "data.size=0", "data.size"),
    ("std_zero", "data.std=0", "data.std"),
    ("device_banana", "run.device=banana", "run.device"),
]:
    CASES[f"config_{_name}"] = _config_case(_override, _key)


@case
def case_config_cuda_without_gpu(tmp: Path, capsys: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from deeppneumonia.runtime.device import check_device

    raises(ConfigError, check_device, "cuda", match="no CUDA GPU")
    csv_path = generic(tmp, "")
    rc, _, err = cli(capsys, "train", "-c", "quick", f"data.path={csv_path}", "run.device=cuda",
                     f"run.out_dir={tmp / 'run'}", f"data.cache_dir={tmp / 'c'}")
    assert rc == 2 and "no CUDA GPU" in err and not (tmp / "c").exists()  # said before the cache is built


# --------------------------------------------------------------------------------------------------
# checkpoints, training state, run folders: one-line messages
# --------------------------------------------------------------------------------------------------


def weights(path: Path, meta: dict[str, Any] | str, state: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    text = meta if isinstance(meta, str) else json.dumps(meta)
    save_file(state or {"fc.weight": torch.zeros(2, 512)}, str(path), metadata={"deeppneumonia": text})
    return path


_META = {"kind": "classifier", "task": "multiclass", "classes": ["a", "b"], "arch": "resnet18",
         "preprocessing": {"size": 32, "resize": "squash", "mean": 0.5, "std": 0.25}}


def _checkpoint_case(meta: dict[str, Any] | str, match: str) -> Case:
    def run(tmp: Path, capsys: Any) -> None:
        from deeppneumonia.inference.predictor import Predictor

        path = weights(tmp / "model.safetensors", meta)
        raises(CheckpointError, Predictor.from_checkpoint, path, "cpu", match=match)
        rc, _, err = cli(capsys, "evaluate", "--checkpoint", str(path), "--data", str(generic(tmp, "")), "--out",
                         str(tmp / "ev"), "--device", "cpu")
        assert rc == 2 and "model.safetensors" in err

    return run


for _name, _meta, _match in [
    ("metadata_not_json", "{not json", "not JSON"),
    ("metadata_a_list", "[1, 2]", "not a JSON object"),
    ("no_classes", {k: v for k, v in _META.items() if k != "classes"}, "no class list"),
    ("wrong_arch", {**_META, "arch": "resnet9000"}, "unknown architecture"),
    ("class_count_mismatch", {**_META, "classes": ["a", "b", "c"]}, "do not fit a resnet18 with 3 classes"),
    ("no_preprocessing", {k: v for k, v in _META.items() if k != "preprocessing"}, "preprocessing"),
]:
    CASES[f"checkpoint_{_name}"] = _checkpoint_case(_meta, _match)


@case
def case_checkpoint_not_safetensors(tmp: Path, capsys: Any) -> None:
    (tmp / "m.safetensors").write_text("hello")
    rc, _, err = cli(capsys, "evaluate", "--checkpoint", str(tmp / "m.safetensors"), "--data", str(tmp))
    assert rc == 2 and "m.safetensors" in err


@case
def case_last_pt_empty_dict(tmp: Path, capsys: Any) -> None:
    torch.save({}, tmp / "last.pt")
    raises(CheckpointError, load_state, tmp / "last.pt", ["model"], match="not a training state")


@case
def case_last_pt_other_stage(tmp: Path, capsys: Any) -> None:
    keys = ("optimizer", "scheduler", "epoch", "best", "best_epoch", "history")
    torch.save({"modules": {"encoder": {}, "projector": {}}, **{k: 0 for k in keys}}, tmp / "last.pt")
    raises(CheckpointError, load_state, tmp / "last.pt", ["model", "heads"], match="another stage")


@case
def case_last_pt_garbage(tmp: Path, capsys: Any) -> None:
    (tmp / "last.pt").write_bytes(b"\x00" * 100)
    raises(CheckpointError, load_state, tmp / "last.pt", ["model"], match="last.pt")


def _out_dir_case(make: Callable[[Path], str]) -> Case:
    def run(tmp: Path, capsys: Any) -> None:
        from deeppneumonia.training.pipeline import open_run

        out = make(tmp)
        raises(ConfigError, open_run, load_config("quick", [f"run.out_dir={out}"]), match="run.out_dir")
        rc, _, err = cli(capsys, "pretrain", "-c", "quick", f"run.out_dir={out}")
        assert rc == 2 and "run.out_dir" in err

    return run


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


CASES["out_dir_is_a_file"] = _out_dir_case(lambda tmp: str(_a_file(tmp)))
CASES["out_dir_under_a_file"] = _out_dir_case(lambda tmp: str(_a_file(tmp) / "run"))
CASES["out_dir_under_proc"] = _out_dir_case(lambda tmp: "/proc/deeppneumonia-run")


@case
def case_weights_file_mode(tmp: Path, capsys: Any) -> None:
    save_weights(tmp / "model.safetensors", {"w": torch.zeros(2)}, {"kind": "x"})
    (tmp / "other.json").write_text("{}")
    assert (tmp / "model.safetensors").stat().st_mode & 0o777 == (tmp / "other.json").stat().st_mode & 0o777


@case
def case_stale_temp_files_removed(tmp: Path, capsys: Any) -> None:
    (tmp / ".last.pt.tmp-999999999").write_bytes(b"x" * 100)
    (tmp / ".model.safetensors.tmp-999999998").write_bytes(b"x")
    (tmp / "keep.json").write_text("{}")
    assert len(remove_stale_temps(tmp)) == 2 and [p.name for p in tmp.iterdir()] == ["keep.json"]


# --------------------------------------------------------------------------------------------------
# evaluate: labels that differ from the model's, every path missing, --n-boot 0
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deeppneumonia.models.factory import build_classifier

    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_weights(path, build_classifier(2, "resnet18").state_dict(), _META)
    return path


def _eval(capsys: Any, ckpt: Path, data: Path, tmp: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp / "ev"),
               "--cache-dir", str(tmp / "cache"), "--device", "cpu", *extra)


def _evaluate_case(body: str, match: tuple[str, ...], rc_want: int, *extra: str) -> Case:
    def run(tmp: Path, capsys: Any) -> None:
        ckpt = CASES_FIXTURES["classifier"]
        path = tmp / "data.csv"
        generic(tmp, "", n_good=0)
        path.write_text("path,label,patient_id\n" + body)
        rc, out, err = _eval(capsys, ckpt, path, tmp, *extra)
        assert rc == rc_want, err
        for m in match:
            assert m in (err if rc else out), (m, out, err)

    return run


CASES_FIXTURES: dict[str, Path] = {}
CASES["evaluate_foreign_labels"] = _evaluate_case("img/0.png,cat,1\nimg/1.png,dog,2\n",
                                                  ("data.csv", "['cat', 'dog']", "['a', 'b']"), 2)
CASES["evaluate_every_path_missing"] = _evaluate_case("img/x.png,a,1\nimg/y.png,b,2\n",
                                                      ("data.csv", "no usable image"), 2)
CASES["evaluate_n_boot_zero"] = _evaluate_case("".join(f"img/{i}.png,{'ab'[i % 2]},{i}\n" for i in range(4)),
                                               ("4 images",), 0, "--n-boot", "0")
CASES["evaluate_n_boot_negative"] = _evaluate_case("img/0.png,a,1\n", ("n_boot",), 2, "--n-boot", "-1")


# --------------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------------

N_CASES = 100


def test_corpus_size() -> None:
    assert len(CASES) == N_CASES >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], classifier: Path) -> None:
    CASES_FIXTURES["classifier"] = classifier
    CASES[name](tmp_path, capsys)

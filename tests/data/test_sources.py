from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from deeppneumonia.data.sources import detect_source, load_source, resolve_data_path
from deeppneumonia.errors import DataError
from tests.conftest import lesion_image, make_siim, save_grey


def test_siim_layout_labels_boxes_and_problems(tmp_path: Path) -> None:
    root = make_siim(tmp_path / "siim")
    assert detect_source(root) == "siim"
    m = load_source(root)
    ids = {r.image_id: r for r in m.records}
    assert sorted(ids) == ["a1", "a2", "b1", "c1", "d1"]
    assert m.classes[ids["a1"].label_index] == "Typical Appearance"
    assert ids["a1"].study_id == ids["a2"].study_id == "s1" and ids["a1"].patient_id == "P1"
    # box of a1 in original 1000x2000 pixels -> stored 64x64: sx = 0.064, sy = 0.032
    (b,) = ids["a1"].boxes
    assert (b.x, b.y, b.w, b.h) == pytest.approx((6.4, 6.4, 19.2, 12.8))
    # c1's box overhangs the image and is clipped to it
    (c,) = ids["c1"].boxes
    assert c.x2 == pytest.approx(64) and c.w == pytest.approx(8.0)
    kinds = sorted(p.kind for p in m.problems)
    assert kinds == ["bad_label", "box_clipped", "missing_file", "unknown_study"]
    missing = next(p for p in m.problems if p.kind == "missing_file")
    assert missing.file.endswith("train_image_level.csv") and missing.row == 8
    assert m.study_class_counts() == {"Negative for Pneumonia": 1, "Typical Appearance": 1,
                                      "Indeterminate Appearance": 1, "Atypical Appearance": 1}
    assert m.class_counts()["Typical Appearance"] == 2


def test_strict_mode_raises_with_file_and_row(tmp_path: Path) -> None:
    root = make_siim(tmp_path / "siim")
    with pytest.raises(DataError, match=r"train_study_level.csv:6"):
        load_source(root, strict=True)


def test_siim_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    root = make_siim(tmp_path / "siim")
    (root / "train_image_level.csv").write_text("id,label\nx_image,none\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['boxes', 'StudyInstanceUID'\]"):
        load_source(root)


def test_folder_layout_with_kermany_patients_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "kermany" / "train"
    for name in ("person1_bacteria_1.jpeg", "person1_virus_2.jpeg", "person2_bacteria_3.jpeg"):
        save_grey(root / "PNEUMONIA" / name, lesion_image(rng, 32, None), "JPEG")
    for name in ("IM-0115-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg", "odd.png"):
        save_grey(root / "NORMAL" / name, lesion_image(rng, 32, None))
    (root / "NORMAL" / "empty.jpeg").write_bytes(b"")
    (root / "NORMAL" / "notes.txt").write_text("hello")
    m = load_source(tmp_path / "kermany")  # a folder of split folders is read through
    assert m.classes == ("NORMAL", "PNEUMONIA")
    assert len(m) == 6
    patients = {r.image_id.split("/")[-1]: r.patient_id for r in m.records}
    assert patients["person1_bacteria_1.jpeg"] == patients["person1_virus_2.jpeg"] == "person1"
    assert patients["IM-0115-0001.jpeg"] == "IM-0115"
    assert patients["NORMAL2-IM-1427-0001.jpeg"] == "NORMAL2-IM-1427"
    kinds = sorted(p.kind for p in m.problems)
    assert kinds == ["no_patient_id", "not_an_image", "unreadable_image"]


def test_covid_cxr_filters_and_reports_unusable_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "covid"
    rows = [("1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "a.png"),
            ("1", "COVID-19", "AP Supine", "X-ray", "b.jpg"),
            ("2", "todo", "PA", "X-ray", "c.png"),
            ("3", "Pneumonia", "L", "X-ray", "d.png"),
            ("4", "Pneumonia", "Axial", "CT", "e.png"),
            ("5", "Pneumonia", "PA", "X-ray", "../../etc/passwd"),
            ("6", "Pneumonia", "AP", "X-ray", "missing.png")]
    with (root / "metadata.csv").open("w", newline="") if root.mkdir() is None else None as fh:  # type: ignore[union-attr]
        w = csv.writer(fh)
        w.writerow(["patientid", "offset", "finding", "view", "modality", "folder", "filename"])
        for pid, finding, view, mod, fn in rows:
            w.writerow([pid, "0", finding, view, mod, "images", fn])
    save_grey(root / "images" / "a.png", lesion_image(rng, 40, None))
    rgb = np.stack([lesion_image(rng, 30, None)] * 3, -1)
    save_grey(root / "images" / "b.jpg", rgb, "JPEG")
    m = load_source(root)
    assert m.classes == ("COVID-19",) and len(m) == 2
    errors = sorted(p.kind for p in m.problems if p.severity == "error")
    assert errors == ["bad_path", "missing_file", "unusable_label"]
    assert sum(p.kind == "filtered" for p in m.problems) == 2


def test_nih_multilabel_and_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "nih"
    (root / "labels.csv").parent.mkdir()
    (root / "labels.csv").write_text(
        "Image Index,Finding Labels,Patient ID,View Position,OriginalImage[Width,Height]\n"
        "a.png,Effusion|Mass,1,PA,1024,1024\nb.png,No Finding,2,PA,1024,1024\nc.png,Flu,3,PA,1024,1024\n")
    (root / "boxes.csv").write_text("Image Index,Finding Label,x,y,w,h,source\na.png,Mass,1,2,3,4,x\n"
                                    "a.png,Fracture,10,10,100,5,x\nzz.png,Mass,1,1,1,1,x\n")
    for n in "abc":
        save_grey(root / "images" / f"{n}.png", lesion_image(rng, 32, None))
    m = load_source(root)
    assert m.task == "multilabel" and len(m.classes) == 14 and len(m) == 2
    a = m.records[0]
    assert a.target[m.classes.index("Effusion")] == 1 and a.target[m.classes.index("Mass")] == 1
    assert sum(a.target) == 2 and sum(m.records[1].target) == 0
    assert len(a.boxes) == 2 and a.boxes[1].w == pytest.approx(22)  # clipped to the 32-px image
    assert {p.kind for p in m.problems} == {"unknown_label", "box_clipped", "orphan_box"}
    b = load_source(root, "nih_binary")
    assert b.task == "multiclass" and b.classes == ("No Finding", "Finding")
    assert [r.label_index for r in b.records] == [1, 0]


def test_nih_official_file_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "ChestX-ray14"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
        "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
        "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,\n")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             "00000001_001.png,Cardiomegaly,4.5,6.0,10.25,12.0,,,\n")
    for n in ("00000001_000", "00000001_001"):
        save_grey(root / "images" / f"{n}.png", lesion_image(rng, 32, None))
    m = load_source(root)
    assert m.task == "multilabel" and len(m) == 2 and {r.patient_id for r in m.records} == {"1"}
    box = m.records[1].boxes[0]
    assert (box.x, box.y, box.w, box.h) == (4.5, 6.0, 10.25, 12.0) and not m.records[0].boxes
    assert m.records[1].target[m.classes.index("Emphysema")] == 1


def test_generic_csv_single_and_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for n in ("a", "b", "c", "d"):
        save_grey(tmp_path / f"{n}.png", lesion_image(rng, 20, None))
    (tmp_path / "one.csv").write_text('path,label,patient_id,boxes\na.png,x,p1,"[[1, 2, 3, 4]]"\n'
                                      'b.png,y,p1,\nc.png,,p2,\nd.png,x,p3,"[[50, 50, 5, 5]]"\n'
                                      'a.png,y,p4,not json\n/abs.png,x,p5,\n')
    m = load_source(tmp_path / "one.csv")
    assert m.classes == ("x", "y") and m.task == "multiclass"
    assert [r.image_id for r in m.records] == ["a.png", "b.png", "d.png"]
    assert m.records[0].boxes[0].h == 4 and m.records[2].boxes == ()
    kinds = sorted(p.kind for p in m.problems)
    assert "missing_label" in kinds and "box_outside_image" in kinds and "bad_path" in kinds
    # with explicit classes, an unknown label is reported
    m2 = load_source(tmp_path / "one.csv", classes=["x"])
    assert any(p.kind == "unknown_label" for p in m2.problems)
    (tmp_path / "multi.csv").write_text("path,A,B\na.png,1,\nb.png,0,1\n")
    ml = load_source(tmp_path / "multi.csv", classes=["A", "B"])
    assert ml.task == "multilabel"
    t = ml.targets()
    assert t[0, 0] == 1 and np.isnan(t[0, 1]) and t[1].tolist() == [0, 1]
    (tmp_path / "pipes.csv").write_text("path,labels\na.png,A|B\nb.png,\n")
    pl = load_source(tmp_path / "pipes.csv")
    assert pl.targets().tolist() == [[1, 1], [0, 0]]


def test_unknown_layout_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="layout not recognised"):
        detect_source(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_source(tmp_path / "nope")


def test_shipped_sample_reads_cleanly() -> None:
    nih = load_source(resolve_data_path("sample:nih"), "nih_binary")
    assert len(nih) == 200 and sum(bool(r.boxes) for r in nih.records) == 28
    assert not [p for p in nih.problems if p.severity == "error"]
    ker = load_source(resolve_data_path("sample:kermany"))
    assert ker.class_counts() == {"NORMAL": 250, "PNEUMONIA": 375}  # scripts/make_sample.py

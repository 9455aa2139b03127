from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeppneumonia.cli import main
from tests.conftest import make_siim


def test_data_inspect_reports_counts_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_siim(tmp_path / "siim")
    (root / "images" / "b1.jpg").write_bytes((root / "images" / "b1.jpg").read_bytes()[:100])  # truncated
    out_json = tmp_path / "report.json"
    assert main(["-q", "data", "inspect", str(root), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "images: 4   patients: 3   studies: 3" in text  # b1 (study s2) fails to decode and is reported
    assert "unreadable_image" in text and "missing_file" in text and "train_image_level.csv:4" in text
    report = json.loads(out_json.read_text())
    assert report["images_with_boxes"] == 3 and len(report["problems"]) == 5


def test_data_prepare_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_siim(tmp_path / "siim")
    assert main(["-q", "data", "prepare", str(root), "--size", "32", "--cache-dir", str(tmp_path / "c"),
                 "--workers", "1"]) == 0
    assert "5 ready at 32px" in capsys.readouterr().out
    assert main(["-q", "data", "inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["-q", "data", "inspect", str(root), "--strict"]) == 2
    assert "strict mode" in capsys.readouterr().err


def test_bad_override_exits_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "train", "train.optim.epochz=3"]) == 2
    assert "unknown key" in capsys.readouterr().err

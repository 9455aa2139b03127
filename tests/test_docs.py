"""The Python on the README and on docs/api.md runs: every ```python block, in order, against a real checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.serve.helpers import chest_like, png_bytes, random_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder as after the quick start: runs/quick/train/model.safetensors, plus scan.dcm and chest.png."""
    pytest.importorskip("pydicom")
    pytest.importorskip("pytorch_grad_cam")
    from tests.data.readers.test_dicom import _dicom_dataset, _save_dicom

    (tmp_path / "runs/quick/train").mkdir(parents=True)
    random_checkpoint(tmp_path / "runs/quick/train/model.safetensors", classes=("NORMAL", "PNEUMONIA"), size=64)
    pixels = (chest_like(96, 80).astype(np.uint16) * 16)  # 12-bit
    _save_dicom(_dicom_dataset(pixels, WindowCenter=2048, WindowWidth=4096), tmp_path / "scan.dcm")
    (tmp_path / "chest.png").write_bytes(png_bytes(chest_like(120, 100, seed=1)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_example_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README has a ```python example"
    assert len([line for line in blocks[0].strip().splitlines() if line.strip()]) <= 5
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "NORMAL" in out and "(1, 64, 64)" in out


def test_api_page_runs(workdir: Path) -> None:
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
    assert (workdir / "runs/quick/evaluation-all/report.html").is_file()
    assert (workdir / "runs/api-demo/train/model.safetensors").is_file()

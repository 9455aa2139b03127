"""The public API of ``deeppneumonia/__init__.py``: lazy, complete, typed, documented."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import deeppneumonia as dp

PKG = Path(dp.__file__).resolve().parent


def test_import_is_light() -> None:
    code = "import sys, deeppneumonia; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_every_public_name_resolves_and_is_in_the_stub() -> None:
    for name in dp.__all__:
        assert getattr(dp, name) is not None, name
    stub = ast.parse((PKG / "__init__.pyi").read_text())
    stubbed = {a.asname or a.name for node in stub.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert stubbed == set(dp.__all__) - {"__version__"}
    assert (PKG / "py.typed").is_file()
    assert dp.XRayDataset is __import__("deeppneumonia.data", fromlist=["XRayDataset"]).XRayDataset


def test_public_functions_document_args_and_returns() -> None:
    names = ["load_predictor", "predict", "explain", "read_image", "load_source", "split_patients", "train", "evaluate",
             "evaluate_checkpoint"]
    for name in names:
        doc = inspect.getdoc(getattr(dp, name)) or ""
        assert "Args:" in doc and "Returns:" in doc, name
    for name in ("XRayDataset", "TrainResult", "EvalResult", "MissingExtraError", "Config"):
        assert inspect.getdoc(getattr(dp, name)), name

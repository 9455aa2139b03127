"""The package's layering, read from its imports (scripts/import_graph.py): no cycle, no upward import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_no_import_cycle() -> None:
    tool = _tool()
    assert tool.cycles(tool.graph()) == []


def test_cycle_detector_finds_a_cycle() -> None:
    tool = _tool()
    assert tool.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_inference_evaluation_serve_never_import_training_or_studies() -> None:
    tool = _tool()
    g = tool.graph()
    for part in ("evaluation", "inference", "serve"):
        reached = tool.reach(g, [m for m in g if tool.part_of(m) == part])
        assert not [m for m in reached if tool.part_of(m) in ("training", "studies", "cli")], part
    assert tool.forbidden_imports(g) == []


def test_the_graph_sees_lazy_imports(tmp_path: Path) -> None:
    tool = _tool()
    g = tool.graph()
    assert "deeppneumonia.training.tasks" in g["deeppneumonia.training.pipeline"]  # imported inside build_task
    assert "deeppneumonia.data.readers.dicom" in g["deeppneumonia.data.imageio"]

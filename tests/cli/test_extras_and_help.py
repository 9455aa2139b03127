"""Every optional extra, when missing, gives one line saying what to install and exit 2; every flag has help;
``config show`` prints the resolved config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import yaml

from deeppneumonia.cli import build_parser, main
from deeppneumonia.extras import MODULE_EXTRAS, MissingExtraError, has, require
from tests.serve.helpers import chest_like, png_bytes, random_checkpoint


def _uninstall(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    """Simulate an extra that is not installed: its modules cannot be imported (``sys.modules[name] = None``)."""
    for name, which in MODULE_EXTRAS.items():
        if which == extra:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)
    for loaded in [m for m in sys.modules if m.startswith("deeppneumonia.serve")]:
        monkeypatch.delitem(sys.modules, loaded)  # so that `serve` imports its dependencies again


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return random_checkpoint(tmp_path / "run" / "train" / "model.safetensors", size=32)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "chest.png"
    path.write_bytes(png_bytes(chest_like(40, 40)))
    return path


def _one_line_hint(capsys: pytest.CaptureFixture[str], extra: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and f"pip install 'deeppneumonia[{extra}]'" in err
    assert "Traceback" not in err


def test_explain_without_explain_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       ckpt: Path, png: Path, tmp_path: Path) -> None:
    _uninstall(monkeypatch, "explain")
    assert main(["explain", "--checkpoint", str(ckpt), str(png), "--out", str(tmp_path / "x")]) == 2
    _one_line_hint(capsys, "explain")
    assert main(["predict", "--checkpoint", str(ckpt), str(png), "--heatmaps", str(tmp_path / "h")]) == 2
    _one_line_hint(capsys, "explain")


def test_predict_dicom_without_dicom_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           ckpt: Path, tmp_path: Path) -> None:
    _uninstall(monkeypatch, "dicom")
    dcm = tmp_path / "scan.dcm"
    dcm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert main(["predict", "--checkpoint", str(ckpt), str(dcm)]) == 2
    _one_line_hint(capsys, "dicom")


def test_export_without_export_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                     ckpt: Path, tmp_path: Path) -> None:
    _uninstall(monkeypatch, "export")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_line_hint(capsys, "export")


def test_serve_without_serve_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                   ckpt: Path) -> None:
    _uninstall(monkeypatch, "serve")
    assert main(["serve", "--checkpoint", str(ckpt)]) == 2
    _one_line_hint(capsys, "serve")


def test_compare_without_experiments_extra(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _uninstall(monkeypatch, "experiments")
    assert main(["compare", "-c", "quick"]) == 2
    _one_line_hint(capsys, "experiments")


def test_an_import_error_of_an_extra_deep_in_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: argparse.Namespace) -> int:
        import pytorch_grad_cam  # noqa: F401

        return 0

    _uninstall(monkeypatch, "explain")
    monkeypatch.setattr("deeppneumonia.cli.train.cmd_config_list", boom)
    assert main(["config", "presets"]) == 2
    _one_line_hint(capsys, "explain")


def test_evaluate_without_explain_extra_writes_metrics_and_report(monkeypatch: pytest.MonkeyPatch,
                                                                 lesion_csv: Path, tmp_path: Path) -> None:
    from deeppneumonia.evaluation.runner import evaluate_checkpoint

    ckpt = random_checkpoint(tmp_path / "r" / "train" / "model.safetensors", classes=("clear", "lesion"), size=32)
    _uninstall(monkeypatch, "explain")
    assert not has("pytorch_grad_cam")
    res = evaluate_checkpoint(ckpt, lesion_csv, tmp_path / "ev", cache_dir=tmp_path / "cache", n_boot=20,
                              progress=False)
    assert (res.out_dir / "metrics.json").is_file() and (res.out_dir / "predictions.csv").is_file()
    report = (res.out_dir / "report.html").read_text()
    assert "Not in this report" in report and "deeppneumonia[explain]" in report
    assert "Gallery" not in report and not list(res.out_dir.glob("gallery_*.png"))
    assert 0 <= res.metrics["image"]["auroc_macro"] <= 1


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'deeppneumonia\[export\]'"):
        require("onnxruntime")
    assert has("numpy")


def _walk(parser: argparse.ArgumentParser, path: str = "deeppneumonia") -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _walk(sub, f"{path} {name}")
        else:
            out.append((path, action))
    return out


def test_every_flag_has_help() -> None:
    actions = _walk(build_parser())
    assert len(actions) > 80
    missing = [f"{path}: {a.option_strings or a.dest}" for path, a in actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_config_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "-c", "quick", "train.optim.epochs=3", "data.size=48"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["optim"]["epochs"] == 3 and shown["data"]["size"] == 48
    assert shown["data"]["path"] == "sample:kermany" and "init_weights" in shown["train"]
    assert main(["config", "show", "-c", "quick", "train.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["config", "presets"]) == 0
    assert {"quick", "quick-boxes", "paper"} <= set(capsys.readouterr().out.split())


def test_run_ends_with_the_report_of_the_test_part(lesion_csv: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = ["-q", "run", "-c", "quick", "--n-boot", "20", f"data.path={lesion_csv}", "data.source=auto", "data.size=32",
            f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.25", "data.test_fraction=0.25",
            "pretrain.optim.epochs=1", "pretrain.optim.batch_size=8", "pretrain.knn_k=3", "train.optim.epochs=1",
            "train.optim.batch_size=8", "train.optim.warmup_epochs=0", f"run.out_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("report (open in a browser): ") and last.endswith("report.html")
    report = Path(last.split(": ", 1)[1])
    assert report.is_file() and report.parent == (tmp_path / "run" / "evaluation").resolve()
    assert "split <b>test</b>" in report.read_text()

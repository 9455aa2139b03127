from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deeppneumonia.cli import build_parser
from deeppneumonia.cli import main as cli_main
from deeppneumonia.errors import DataError
from deeppneumonia.studies.localization import localization_markdown, run_localization
from tests.conftest import make_lesion_csv


def test_localize_trains_iam_from_the_baseline_and_scores_every_row(tmp_path: Path) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=24, size=32)
    overrides = [f"data.path={csv_path}", "data.source=auto", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.val_fraction=0.25", "data.test_fraction=0.25", "train.optim.epochs=1", "train.optim.batch_size=8",
                 "train.iam.warmup_epochs=1", "train.iam.iterations=1", "run.progress=false", "run.precision=fp32"]
    # the guided row is loaded (here: the baseline of a first study) so that no Stage I runs in this test
    base_dir = tmp_path / "base"
    from deeppneumonia.config import load_config
    from deeppneumonia.training.pipeline import run_train

    run_train(load_config("quick", [*overrides, f"run.out_dir={base_dir}", "train.pretrained=false",
                                    "train.mgacr.attention=false", "train.mgacr.feature=false"]))
    model = base_dir / "train" / "model.safetensors"
    summary = run_localization("quick", overrides, tmp_path / "loc", baseline=model, guided=model)
    rows = summary["rows"]
    # reference rows first (no model), at the grid of every learned map (32 px: layer4 1x1, the MSA map 2x2)
    assert [(r["model"], r["maps"], r["grid"]) for r in rows] == [
        ("Centre prior (no model)", "Gaussian", "full"), ("Oracle 2x2 (boxes)", "pooled box mask", "2x2"),
        ("Oracle 1x1 (boxes)", "pooled box mask", "1x1"), ("ResNet18", "Grad-CAM", "1x1"),
        ("IAM (no MSA)", "round-0 CAM", "1x1"), ("IAM (no MSA)", "IAM", "1x1"), ("IAM + MSA", "round-0 CAM", "2x2"),
        ("IAM + MSA", "IAM", "2x2"), ("Deep Pneumonia (guided)", "Grad-CAM", "1x1")]
    assert rows[5]["arch"] == "resnet18" and rows[7]["arch"] == "resnet18_msa34" and rows[7]["iam_rounds"] == 1
    n = summary["scored_items"]
    assert n == summary["boxed_test_images"] > 0 and all(r["localization"]["overall"]["n"] == n for r in rows)
    assert all(0 <= r["localization"]["overall"]["tiou@0.1"] <= 1 for r in rows)
    assert rows[1]["localization"]["overall"]["tiou@0.1"] >= rows[2]["localization"]["overall"]["tiou@0.1"]
    assert all(r["localization"]["per_image"]["patient"] == rows[0]["localization"]["per_image"]["patient"] for r in rows)
    occ = summary["occlusion"]
    assert set(occ) == {"ResNet18", "Deep Pneumonia (guided)", "Deep Pneumonia (guided) − ResNet18"}
    assert occ["ResNet18"]["n"] + occ["ResNet18"]["skipped"] == n and occ["ResNet18"]["road"]["n"] > 0
    table = localization_markdown(summary, "deeppneumonia localize ...")
    # header + 9 rows; header + 10 paired comparisons (4 IAM, 6 learned rows - centre prior); header + 2 models
    assert table.count("\n| ") == (1 + 9) + (1 + 10) + (1 + 2)
    assert "Paired differences" in table and "T(IoU)=0.7" in table and "| grid |" in table and "Box occlusion" in table
    # without the IAM models and with both models loaded nothing is trained: Grad-CAM rows, references, occlusion
    lean = run_localization("quick", overrides, tmp_path / "lean", baseline=model, guided=model, iam=False)
    assert [(r["model"], r["maps"]) for r in lean["rows"]] == [
        ("Centre prior (no model)", "Gaussian"), ("Oracle 1x1 (boxes)", "pooled box mask"), ("ResNet18", "Grad-CAM"),
        ("Deep Pneumonia (guided)", "Grad-CAM")]
    assert not any((tmp_path / "lean" / name).exists() for name in ("iam", "iam_msa", "resnet18", "deep_pneumonia"))
    assert set(lean["occlusion"]) == set(occ)
    # a guided model trained with its MGACR heads kept: map+ of each guided layer is scored too
    run_train(load_config("quick", [*overrides, f"run.out_dir={tmp_path / 'guided'}", "train.pretrained=false",
                                    "train.mgacr.attention=true", "train.mgacr.layers=[3]",
                                    "train.keep_attention_heads=true"]))
    guided = tmp_path / "guided" / "train" / "model.safetensors"
    with_heads = run_localization("quick", overrides, tmp_path / "heads", baseline=model, guided=guided, iam=False,
                                  occlusion_fill="none")
    assert ("Deep Pneumonia (guided)", "map+ layer3") in [(r["model"], r["maps"]) for r in with_heads["rows"]]
    other = tmp_path / "other" / "run" / "train"
    other.mkdir(parents=True)
    (tmp_path / "other" / "run" / "split.json").write_text('{"test": ["nope"]}')
    (other / "model.safetensors").write_bytes(model.read_bytes())
    with pytest.raises(DataError, match="another split"):
        run_localization("quick", overrides, tmp_path / "loc2", baseline=other / "model.safetensors")


def test_localize_command_line() -> None:
    args = build_parser().parse_args(["localize", "--out", "x", "--baseline", "b.safetensors", "train.iam.msa=false"])
    assert args.config == "siim-ablation-cpu" and args.baseline == Path("b.safetensors") and args.guided is None
    assert args.overrides == ["train.iam.msa=false"]


def test_reference_rows_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=24, size=32)
    out = tmp_path / "refs"
    argv = ["localize", "--references-only", "-c", "quick", "--out", str(out), f"data.path={csv_path}",
            "data.source=auto", "data.size=64", f"data.cache_dir={tmp_path / 'cache'}", "data.test_fraction=0.25",
            "run.progress=false"]
    monkeypatch.setattr(sys, "argv", ["deeppneumonia", *argv])  # the table records the command as typed
    assert cli_main(argv) == 0
    table = (out / "references.md").read_text()
    assert "Oracle 2x2 (boxes)" in table and "Oracle 16x16 (boxes)" in table and "Centre prior" in table
    assert "deeppneumonia localize --references-only -c quick" in capsys.readouterr().out

from __future__ import annotations

from pathlib import Path

import pytest

from deeppneumonia.cli import build_parser
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
    assert [(r["model"], r["maps"]) for r in rows] == [
        ("Centre prior (no model)", "Gaussian"), ("ResNet18", "Grad-CAM"), ("IAM (no MSA)", "round-0 CAM"),
        ("IAM (no MSA)", "IAM"),
        ("IAM + MSA", "round-0 CAM"), ("IAM + MSA", "IAM"), ("Deep Pneumonia (guided)", "Grad-CAM")]
    assert rows[3]["arch"] == "resnet18" and rows[5]["arch"] == "resnet18_msa34" and rows[5]["iam_rounds"] == 1
    n = summary["boxed_test_images"]
    assert n > 0 and all(r["localization"]["overall"]["n"] == n for r in rows)
    assert all(0 <= r["localization"]["overall"]["tiou@0.1"] <= 1 for r in rows)
    table = localization_markdown(summary, "deeppneumonia localize ...")
    assert table.count("\n| ") == (1 + 7) + (1 + 4)  # header + 7 rows; header + 4 paired comparisons
    assert "Paired differences" in table and "T(IoU)=0.7" in table and "pointing" in table
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

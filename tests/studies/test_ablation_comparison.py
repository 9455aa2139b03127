from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeppneumonia.errors import ConfigError
from deeppneumonia.studies.ablation import TABLE1, ablation_markdown, run_ablation
from tests.conftest import make_lesion_csv


def test_ablation_runs_every_row_and_prints_a_table(tmp_path: Path) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=40, size=32)
    overrides = [f"data.path={csv_path}", "data.source=auto", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.val_fraction=0.25", "data.test_fraction=0.25", "pretrain.optim.epochs=1",
                 "pretrain.optim.batch_size=8", "pretrain.knn_k=3", "train.optim.epochs=1", "train.optim.batch_size=8",
                 "run.progress=false", "run.precision=fp32"]
    summary = run_ablation("quick", overrides, [0], tmp_path / "abl")
    assert [len(v) for v in summary["results"].values()] == [1] * len(TABLE1)
    # rows 2-5 start from the same Stage I encoder; row 1 does not
    cfgs = [json.loads(json.dumps(__import__("yaml").safe_load((tmp_path / "abl" / "seed0" / f"row{k}" / "config.yaml")
                                                                   .read_text()))) for k in range(1, 6)]
    assert [c["train"]["pretrained"] for c in cfgs] == [False, True, True, True, True]
    assert [c["train"]["loss"]["kind"] for c in cfgs] == ["ce", "ce", "ce", "ce", "cb_focal"]
    assert [c["train"]["mgacr"]["attention"] for c in cfgs] == [False, False, True, True, True]
    assert [c["train"]["mgacr"]["feature"] for c in cfgs] == [False, False, False, True, True]
    table = ablation_markdown(summary, "deeppneumonia ablate ...")
    rows_table, paired_table = table.split("Paired difference")
    assert rows_table.count("\n| ") == 6 and "+ CB focal loss (full)" in rows_table and "study_map" in rows_table
    assert paired_table.count("\n| ") == 1 + 4  # header + rows 2-5 against row 1
    # one seed: the interval is the test patients' bootstrap alone, and the table says so
    assert paired_table.count("bootstrap over test patients only (one seed: no seed noise)") == 4


def test_rows_and_records_grow_one_table_and_are_not_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deeppneumonia.studies.ablation as ablation

    csv_path = make_lesion_csv(tmp_path / "d", n=40, size=32)
    overrides = [f"data.path={csv_path}", "data.source=auto", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.val_fraction=0.25", "data.test_fraction=0.25", "pretrain.optim.epochs=1",
                 "pretrain.optim.batch_size=8", "pretrain.knn_k=3", "train.optim.epochs=1", "train.optim.batch_size=8",
                 "run.progress=false", "run.precision=fp32"]
    record = tmp_path / "record"
    first = run_ablation("quick", overrides, [0, 1], tmp_path / "abl", rows=[1, 5], record_dir=record)
    full = "+ CB focal loss (full)"
    assert [len(v) for v in first["results"].values()] == [2, 0, 0, 0, 2]
    assert sorted(f.name for f in record.iterdir()) == [f"seed{s}_row{k}.{e}" for s in (0, 1) for k in (1, 5)
                                                        for e in ("json", "npz")]
    paired = first["paired"][full]
    assert paired["seeds"] == [0, 1] and paired["ci"] == "bootstrap over seeds and test patients"
    lo, hi = paired["study_map"][1], paired["study_map"][2]
    assert lo <= paired["study_map"][0] <= hi

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a recorded row was trained again")

    monkeypatch.setattr(ablation, "run_train", refuse)
    monkeypatch.setattr(ablation, "run_pretrain", refuse)
    again = run_ablation("quick", overrides, [0, 1], tmp_path / "abl2", rows=[1, 5], record_dir=record)
    assert again["results"] == json.loads(json.dumps(first["results"]))


def test_paired_interval_is_the_t_interval_of_the_differences() -> None:
    from scipy.stats import t as student_t

    from deeppneumonia.studies.ablation import paired_interval

    d = [0.02, 0.05, -0.01, 0.03, 0.04]
    mean, lo, hi = paired_interval(d)  # type: ignore[misc]
    half = student_t.ppf(0.975, 4) * float(__import__("numpy").std(d, ddof=1)) / 5 ** 0.5
    assert mean == pytest.approx(0.026) and lo == pytest.approx(0.026 - half) and hi == pytest.approx(0.026 + half)
    assert paired_interval([0.1]) is None


def test_classical_baselines_learn_the_synthetic_lesion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deeppneumonia.studies.comparison import comparison_markdown, run_comparison

    csv_path = make_lesion_csv(tmp_path / "d", n=60, size=32)
    overrides = [f"data.path={csv_path}", "data.source=auto", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.val_fraction=0.2", "data.test_fraction=0.3", "run.progress=false"]
    summary = run_comparison("quick", overrides, [0], tmp_path / "cmp", deep=False)
    assert set(summary["results"]) == {"KNN", "Decision tree", "AdaBoost", "Random forest", "SVM (poly)"}
    best = max(r[0]["accuracy"] for r in summary["results"].values())
    assert best >= 0.8  # a bright box is easy for HOG + pixels; chance is 0.5
    assert "| SVM (poly) |" in comparison_markdown(summary, "cmd")

    # --previous: the rows already measured are reused, not re-fitted; another split is refused
    import deeppneumonia.studies.baselines as baselines

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("a reused row was fitted again")

    monkeypatch.setattr(baselines, "fit_classical", refuse)
    again = run_comparison("quick", overrides, [0], tmp_path / "cmp2", deep=False,
                           previous=tmp_path / "cmp" / "comparison.json")
    assert again["results"] == json.loads(json.dumps(summary["results"]))
    assert again["row_seeds"]["SVM (poly)"] == [0]
    with pytest.raises(ConfigError, match="test part"):
        other = tmp_path / "other.json"
        other.write_text(json.dumps({**summary, "test_split": "x"}))
        run_comparison("quick", overrides, [0], tmp_path / "cmp3", deep=False, previous=other)


def test_without_boxes_the_full_row_drops_mgacr(tmp_path: Path) -> None:
    import csv

    csv_path = make_lesion_csv(tmp_path / "d", n=32, size=32)
    rows = list(csv.DictReader(csv_path.open()))
    for r in rows:
        r["boxes"] = ""
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    overrides = [f"data.path={csv_path}", "data.source=auto", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.val_fraction=0.25", "data.test_fraction=0.25", "pretrain.optim.epochs=1",
                 "pretrain.optim.batch_size=8", "pretrain.knn_k=3", "train.optim.epochs=1", "train.optim.batch_size=8",
                 "run.progress=false", "run.precision=fp32"]
    summary = run_ablation("quick", overrides, [0], tmp_path / "abl")
    assert [len(v) for v in summary["results"].values()] == [1, 1, 0, 0, 1]
    cfg = __import__("yaml").safe_load((tmp_path / "abl" / "seed0" / "row5" / "config.yaml").read_text())
    assert cfg["train"]["mgacr"]["attention"] is False and cfg["train"]["loss"]["kind"] == "cb_focal"


def test_an_older_summary_without_run_seeds_still_renders_with_paired_differences() -> None:
    runs = {name: [{"study_map": 0.3 + 0.01 * k + 0.02 * s, "macro_f1": 0.3, "auroc_macro": 0.6} for s in range(3)]
            for k, name in enumerate(row.name for row in TABLE1)}
    summary = {"data": "d", "test_images": 10, "test_patients": 5, "seeds": [0, 1, 2], "results": runs,
               "hardware": {"device": "cpu", "torch": "x"}}
    table = ablation_markdown(summary, "cmd")
    assert "| 0,1,2 |" in table and "t-interval over per-seed differences" in table
    assert "+0.040 [+0.040, +0.040]" in table  # row 5 - row 1 is 0.04 at every seed: no spread

"""The helper scripts under scripts/ that the docs quote (run as a user would)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_loss_balance_table_from_a_metrics_log(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"epoch": 1, "train_gn_cls": 2.0, "train_gn_att_pos": 1.0, "train_gn_att_neg": 0.5,
                "val_att2_inside": 0.4, "val_att3_inside": 0.5, "val_att_mask_area": 0.3, "val_study_map": 0.41},
               {"epoch": 2, "train_gn_cls": 1.0, "train_gn_att_pos": 2.0, "train_gn_att_neg": 0.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "loss_balance.py"), str(log)], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0].split(" | ")[1:4] == ["gn_cls", "gn_att_pos", "gn_att_neg"]  # no feat term was logged
    assert "inside layer2" in out[0] and "inside layer3" in out[0]
    assert out[2].startswith("| 1 | 2.000 | 1.000 | 0.500 | 0.50 | 0.25 | 0.400 | 0.500 | 0.300 | 0.410 |")
    assert out[3].startswith("| 2 | 1.000 | 2.000 | 0.500 | 2.00 | 0.50 | – | – | – | – |")


def _predictions(path: Path, shift: float, seed: int) -> Path:
    """A test_predictions.npz: 40 images of 20 patients (2 studies each of 1 image), 3 classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    targets = np.eye(3)[np.arange(40) % 3]
    probs = np.clip(targets * shift + rng.random((40, 3)), 1e-3, None)
    np.savez(path, probs=probs / probs.sum(1, keepdims=True), targets=targets,
             image_id=np.array([f"i{k}" for k in range(40)]), study_id=np.array([f"s{k}" for k in range(40)]),
             patient_id=np.array([f"p{k // 2}" for k in range(40)]))
    return path


def test_paired_runs_prints_the_paired_differences(tmp_path: Path) -> None:
    good = [_predictions(tmp_path / f"good{s}.npz", 2.0, s) for s in (0, 1)]
    poor = [_predictions(tmp_path / f"poor{s}.npz", 0.0, s + 10) for s in (0, 1)]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "paired_runs.py"), "--a", *map(str, good), "--b",
                          *map(str, poor), "--n-boot", "200"], check=True, capture_output=True, text=True).stdout
    assert "over 2 paired run(s); 95 % bootstrap over seeds and test patients" in out
    delta = float(out.split("Δ study_map: ")[1].split()[0])
    assert delta > 0.2  # the informative probabilities beat the noise ones
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "paired_runs.py"), "--a", str(good[0]), "--b",
                          *map(str, poor)], capture_output=True, text=True)
    assert bad.returncode != 0 and "same number of runs" in bad.stderr


def test_bf16_parity_reports_a_small_difference(tmp_path: Path) -> None:
    from tests.serve.helpers import chest_like, png_bytes, random_checkpoint

    ckpt = random_checkpoint(tmp_path / "model.safetensors", ("normal", "pneumonia"), size=64)
    for i in range(6):
        (tmp_path / "imgs" / ("normal" if i % 2 else "pneumonia")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / ("normal" if i % 2 else "pneumonia") / f"{i}.png").write_bytes(
            png_bytes(chest_like(70, 80, seed=i)))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bf16_parity.py"), "--checkpoint", str(ckpt),
                          "--data", str(tmp_path / "imgs")], check=True, capture_output=True, text=True).stdout
    assert out.startswith("6 images: max |prob diff| ")
    assert float(out.split("max |prob diff| ")[1].split(",")[0]) < 0.05


def test_results_doc_quotes_the_command_a_study_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`deeppneumonia ablate` stores its command line in ablation.json; make_results_doc.py quotes it verbatim."""
    from deeppneumonia.cli.studies import _publish

    row = {"seed": 0, "accuracy": 0.6, "macro_f1": 0.3, "study_map": 0.42, "train_minutes": 1.0}
    summary = {"preset": "siim-128-cpu", "overrides": ["data.path=x"], "seeds": [0], "data": "x", "test_images": 9,
               "test_patients": 5, "hardware": {"device": "CPU", "torch": "2"}, "paired": {},
               "results": {"ResNet18": [row]}}
    argv = ["deeppneumonia", "-q", "ablate", "-c", "siim-128-cpu", "--rows", "1", "--record", "results/t1"]
    monkeypatch.setattr(sys, "argv", argv)
    _publish(tmp_path, "table1.md", "table", summary, "ablation.json")
    stored = json.loads((tmp_path / "ablation.json").read_text())
    assert stored["command"] == "deeppneumonia -q ablate -c siim-128-cpu --rows 1 --record results/t1"
    out = tmp_path / "results.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_results_doc.py"), "--ablation",
                    str(tmp_path / "ablation.json"), "--intro", str(tmp_path / "none.md"), "--discussion",
                    str(tmp_path / "none.md"), "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    assert "Command: `deeppneumonia -q ablate -c siim-128-cpu --rows 1 --record results/t1`" in text
    assert "## Table I (ablation, `siim-128-cpu`): x" in text and "| 0.420" in text.split("| ResNet18 |")[1].splitlines()[0]


def test_last_epoch_test_equals_the_kept_model_when_the_last_epoch_is_kept(tmp_path: Path) -> None:
    import numpy as np

    from deeppneumonia.config import load_config
    from deeppneumonia.training.pipeline import run_train
    from tests.conftest import make_lesion_csv

    csv_path = make_lesion_csv(tmp_path / "d", n=40, size=32)
    run = tmp_path / "run"
    run_train(load_config(None, [
        f"data.path={csv_path}", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "train.pretrained=false", "train.optim.epochs=2", "train.optim.batch_size=8",
        "train.optim.warmup_epochs=0", "train.best_metric=last", f"run.out_dir={run}", "run.progress=false",
        "run.precision=fp32"]))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "last_epoch_test.py"), str(run), "--out",
                          str(tmp_path / "last"), "--names", "r"], check=True, capture_output=True, text=True).stdout
    assert out.startswith("r: last epoch 2, study_map ")
    kept, last = np.load(run / "test_predictions.npz"), np.load(tmp_path / "last" / "r.npz")
    assert np.allclose(kept["probs"], last["probs"], atol=1e-6) and (kept["image_id"] == last["image_id"]).all()


def test_val_compare_pairs_runs_by_seed_and_reads_validation_only(tmp_path: Path) -> None:
    def log(path: Path, values: list[float]) -> Path:
        path.write_text("".join(json.dumps({"epoch": i + 1, "val_study_map": v, "test_study_map": 9.0}) + "\n"
                                for i, v in enumerate(values)))
        return path

    a = [log(tmp_path / f"a{s}.jsonl", [0.30, 0.40 + s / 100, 0.42 + s / 100]) for s in range(3)]
    b = [log(tmp_path / f"b{s}.jsonl", [0.35, 0.38 + s / 100, 0.37 + s / 100]) for s in range(3)]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "val_compare.py"), "--a", *map(str, a), "--b",
                          *map(str, b), "--names", "new", "old", "--last", "2"],
                         check=True, capture_output=True, text=True).stdout
    assert "| new best | old best |" in out and "Δ last2" in out
    summary = out.strip().splitlines()[-1]
    # constant per-seed differences: best +0.040, last +0.050, mean of the last two +0.035, zero-width intervals
    assert "+0.040 [+0.040, +0.040]" in summary and "+0.050 [+0.050, +0.050]" in summary
    assert "+0.035 [+0.035, +0.035]" in summary
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "val_compare.py"), "--a", str(a[0]), "--b",
                          *map(str, b)], capture_output=True, text=True)
    assert bad.returncode != 0 and "same number" in bad.stderr


def test_mgacr_heads_runner_records_each_run_and_skips_recorded_ones(tmp_path: Path) -> None:
    # a stand-in for python that logs its arguments and writes what a finished `deeppneumonia train` leaves
    fake = tmp_path / "fake-python"
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$CALLS"\nfor a in "$@"; do case $a in run.out_dir=*) '
                    'd=${a#run.out_dir=};; esac; done\nmkdir -p "$d/train"\necho "{}" > "$d/test_metrics.json"\n'
                    'echo "{}" > "$d/train/metrics.jsonl"\necho x > "$d/test_predictions.npz"\n')
    fake.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "mgacr_heads.sh").write_text((ROOT / "scripts" / "mgacr_heads.sh").read_text())
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "OUT": str(tmp_path / "runs")}

    def run() -> list[str]:
        subprocess.run(["bash", str(repo / "scripts" / "mgacr_heads.sh"), "0 1", "plain conv1x1"], check=True, env=env)
        return (tmp_path / "calls").read_text().splitlines()

    calls = run()
    assert len(calls) == 4 and all("train -c siim-cpu" in c and "train.loss.kind=ce" in c for c in calls)
    assert "train.mgacr.attention=false" in calls[0] and "run.seed=0" in calls[0]
    assert "train.mgacr.head=conv1x1" in calls[1] and "train.mgacr.weight_attention=3" in calls[1]
    rec = repo / "results" / "mgacr-heads"
    assert sorted(p.name for p in rec.iterdir())[:3] == ["conv1x1_seed0.json", "conv1x1_seed0.npz",
                                                          "conv1x1_seed0_metrics.jsonl"]
    assert len(run()) == 4  # every record exists: nothing is trained again
    # the Stage I arms: one SimCLR run per seed, shared by `stage1` and `full`, its log recorded
    (tmp_path / "calls").unlink()
    fake.write_text(fake.read_text() + 'case "$*" in *" pretrain "*) mkdir -p "$d/pretrain"; '
                    'echo x > "$d/pretrain/encoder.safetensors"; echo "{}" > "$d/pretrain/metrics.jsonl";; esac\n')
    subprocess.run(["bash", str(repo / "scripts" / "mgacr_heads.sh"), "0", "full stage1"], check=True, env=env)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 3 and "pretrain -c siim-cpu" in calls[0] and "run.seed=0" in calls[0]
    encoder = f"train.encoder={tmp_path / 'runs' / 'simclr-seed0' / 'pretrain' / 'encoder.safetensors'}"
    assert encoder in calls[1] and "train.loss.kind=cb_focal" in calls[1] and "train.pretrained=true" in calls[1]
    assert encoder in calls[2] and "train.loss.kind=ce" in calls[2]
    assert (rec / "simclr_seed0_metrics.jsonl").exists() and (rec / "stage1_seed0.npz").exists()
    bad = subprocess.run(["bash", str(repo / "scripts" / "mgacr_heads.sh"), "0", "vit"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown arm vit" in bad.stderr


def test_int8_parity_run_measures_on_the_runs_test_part(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import yaml

    from deeppneumonia.config import load_config
    from tests.conftest import make_lesion_csv
    from tests.serve.helpers import random_checkpoint

    csv = make_lesion_csv(tmp_path / "data", n=40, size=48)
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    cfg = load_config("quick", [f"data.path={csv}", "data.source=auto", "data.size=32",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
    random_checkpoint(run / "train" / "model.safetensors", ("clear", "lesion"), size=32)
    spec = importlib.util.spec_from_file_location("int8_parity_run", ROOT / "scripts" / "int8_parity_run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calib, labelled, n_test = mod.link_parts(run, tmp_path / "out", 6)
    assert len(list(calib.iterdir())) == 6 and n_test > 0
    linked = sorted(p.name for p in labelled.rglob("*.png"))
    assert len(linked) == n_test and {p.parent.name for p in labelled.rglob("*.png")} <= {"clear", "lesion"}
    assert not {p.name for p in calib.iterdir()} & set(linked)  # calibration from training images only
    assert mod.main(["--run", str(run), "--out", str(tmp_path / "out2"), "--calibration", "6"]) == 0
    report = json.loads((tmp_path / "out2" / "model.int8.parity.json").read_text())
    assert 0 <= report["auroc_fp32"] <= 1 and abs(report["auroc_diff"]) < 1  # AUROC measured on the test part
    assert report["parity_on"] == str(tmp_path / "out2" / "labelled")

"""Score the *last* epoch of finished training runs on their test patients.

A run keeps the epoch with the best validation score (``train.best_metric``) as ``train/model.safetensors``; its
resume file ``train/last.pt`` holds the weights after the last epoch. This script rebuilds each run's data and
split from its ``config.yaml``, loads the last epoch's weights (``torch.load(weights_only=True)``), predicts the
run's test part and writes ``OUT/<name>.npz`` in the format of ``test_predictions.npz`` (for
``scripts/paired_runs.py``), then prints one line of metrics per run. Used to measure what the best-epoch
selection adds to the seed-to-seed spread (docs/results_table1_128.md).

Usage: python scripts/last_epoch_test.py RUN_DIR [RUN_DIR ...] --out DIR [--names NAME ...]
       (RUN_DIR: a folder with config.yaml and train/last.pt, e.g. runs/t1-siim128/seed4/row1)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from deeppneumonia.config import config_from_dict
from deeppneumonia.errors import CheckpointError
from deeppneumonia.training.pipeline import load_model, prepare_data, runtime_for, score_test_part


def last_epoch_predictions(run: Path, out: Path) -> dict[str, float]:
    """Write the last epoch's test predictions of ``run`` to ``out``; return its metrics and epoch."""
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    state = torch.load(run / "train" / "last.pt", map_location="cpu", weights_only=True)
    if state.get("partial") is not None:
        raise CheckpointError(f"{run}: train/last.pt is from the middle of an epoch: the run did not finish")
    data = prepare_data(cfg, progress=False)
    rt = runtime_for(cfg)
    model, meta, _ = load_model(run / "train" / "model.safetensors", rt)
    model.load_state_dict(state["modules"]["model"])
    metrics = score_test_part(model.eval(), meta["task"] == "multilabel", cfg, data, rt, out)
    return {"epoch": int(state["epoch"]) + 1, **{k: float(v) for k, v in metrics.items() if isinstance(v, float)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--names", nargs="*", default=None, help="one file name per run (default: the run folder's)")
    args = ap.parse_args()
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit("--names: give one name per run")
    args.out.mkdir(parents=True, exist_ok=True)
    for run, name in zip(args.runs, names, strict=True):
        m = last_epoch_predictions(run, args.out / f"{name}.npz")
        print(f"{name}: last epoch {m['epoch']}, study_map {m.get('study_map', float('nan')):.4f}, "
              f"macro_f1 {m.get('macro_f1', float('nan')):.4f}, auroc_macro {m.get('auroc_macro', float('nan')):.4f}")


if __name__ == "__main__":
    main()

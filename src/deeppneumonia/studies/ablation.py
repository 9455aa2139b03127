"""Reproduce the paper's Table I (ablation) on any data set, several seeds, one command.

Rows (each adds one technique to the row above, the same budget per row):
  1 ResNet18                        2 + contrastive pre-training (Stage I)
  3 + mask-guided attention (Eqs. 2-4)   4 + feature contrastive regulation (Eq. 5)
  5 + class-balanced focal loss (Eq. 9)
The patient-grouped split is fixed (``data.split_seed``) so every row and seed is scored on the same
held-out patients; seeds change initialisation, batch order and augmentation. Stage I runs once per seed
and is shared by rows 2-5. Without boxes in the data, rows 3-4 are skipped (nothing to guide) and row 5
is pre-training + the class-balanced focal loss with MGACR off.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeppneumonia.config import load_config
from deeppneumonia.studies.common import hardware, mean_sd, study_config
from deeppneumonia.training.loop import logged_seconds
from deeppneumonia.training.pipeline import PreparedData, prepare_data, run_pretrain, run_train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]
    pretrained: bool
    needs_boxes: bool = False


TABLE1 = (
    Row("ResNet18", ("train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"), False),
    Row("+ CL pre-train", ("train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"), True),
    Row("+ mask-guided attention", ("train.mgacr.attention=true", "train.mgacr.feature=false", "train.loss.kind=ce"),
        True, True),
    Row("+ feature CR", ("train.mgacr.attention=true", "train.mgacr.feature=true", "train.loss.kind=ce"), True, True),
    Row("+ CB focal loss (full)", ("train.mgacr.attention=true", "train.mgacr.feature=true", "train.loss.kind=cb_focal"),
        True, True),
)
COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "study_map", "auroc_macro")

def run_ablation(preset: str, overrides: list[str], seeds: list[int], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, overrides)
    data: PreparedData = prepare_data(base, base.run.progress)
    has_boxes = any(r.boxes for r in data.manifest.records)
    results: dict[str, list[dict[str, Any]]] = {row.name: [] for row in TABLE1}
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        encoder = seed_dir / "pretrain" / "encoder.safetensors"
        pre_cfg = study_config(preset, overrides, seed_dir, seed, ())
        run_pretrain(pre_cfg, data)
        pre_seconds = logged_seconds(seed_dir / "pretrain")
        pre_minutes = pre_seconds / 60 if pre_seconds is not None else None
        for k, row in enumerate(TABLE1, start=1):
            extra = (*row.overrides, f"train.pretrained={str(row.pretrained).lower()}")
            if row.needs_boxes and not has_boxes:
                if k < len(TABLE1):
                    continue
                extra = (*extra, "train.mgacr.attention=false", "train.mgacr.feature=false")
            if row.pretrained:
                extra = (*extra, f"train.encoder={encoder}")
            cfg = study_config(preset, overrides, seed_dir / f"row{k}", seed, extra)
            metrics = run_train(cfg, data)
            metrics["pretrain_minutes"] = pre_minutes if row.pretrained else 0.0
            results[row.name].append(metrics)
            log.info("seed %d, %s: %s", seed, row.name, {c: metrics.get(c) for c in COLUMNS})
    summary = {"preset": preset, "overrides": overrides, "seeds": seeds, "results": results,
               "data": base.data.path, "test_images": len(data.test), "test_patients":
               len({data.manifest.records[int(i)].patient_id for i in data.test.indices}),
               "hardware": hardware(), "has_boxes": has_boxes}
    (out_dir / "ablation.json").write_text(json.dumps(summary, indent=1))
    return summary


def ablation_markdown(summary: dict[str, Any], command: str) -> str:
    lines = [f"Data `{summary['data']}`; test part: {summary['test_images']} images of {summary['test_patients']} "
             f"held-out patients. Seeds {summary['seeds']}; mean ± sd over seeds. Hardware: "
             f"{summary['hardware']['device']}, torch {summary['hardware']['torch']}.", "",
             f"Command: `{command}`", "",
             "| row | " + " | ".join(COLUMNS) + " | Stage II min | Stage I min |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, runs in summary["results"].items():
        if not runs:
            continue
        cells = [mean_sd([r.get(c) for r in runs]) for c in COLUMNS]
        cells.append(mean_sd([r.get("train_minutes") for r in runs]))
        cells.append(mean_sd([r.get("pretrain_minutes", 0.0) for r in runs]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

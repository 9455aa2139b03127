"""int8 export parity on a run's own held-out patients: calibrate on its training images, compare on its test part.

`deeppneumonia export --quantize int8` takes a calibration folder and a labelled folder (one sub-folder per class).
This script builds both from a finished run, so the parity report (max |prob diff|, agreement of the decided
class, AUROC fp32 vs int8) is measured on images the model never trained on: ``--calibration`` random files of
the run's training part, and every image of its test part linked into ``<out>/labelled/<class>/`` (multi-class
runs only). The split is recomputed from the run's saved config (the same patient split the run used).

Usage: python scripts/int8_parity_run.py --run runs/kermany-224 --out /tmp/parity [--calibration 64]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from deeppneumonia.config import load_config
from deeppneumonia.inference.export import export_int8
from deeppneumonia.training.pipeline import read_and_split


def link_parts(run: Path, out: Path, n_calibration: int, seed: int = 0) -> tuple[Path, Path, int]:
    """(calibration folder, labelled folder, test images linked) for the run in ``run``."""
    manifest, split = read_and_split(load_config(str(run / "config.yaml")))
    if manifest.task != "multiclass":
        raise SystemExit(f"{run}: a {manifest.task} run; the labelled-folder parity needs one class per image")
    calib, labelled = out / "calibration", out / "labelled"
    for k in np.random.default_rng(seed).permutation(split.train)[:n_calibration]:
        rec = manifest.records[int(k)]
        (calib / f"{k}{rec.path.suffix}").parent.mkdir(parents=True, exist_ok=True)
        (calib / f"{k}{rec.path.suffix}").symlink_to(rec.path.resolve())
    for k in split.test:
        rec = manifest.records[int(k)]
        dest = labelled / manifest.classes[rec.label_index] / f"{k}{rec.path.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(rec.path.resolve())
    return calib, labelled, len(split.test)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run folder (config.yaml, train/model.safetensors)")
    ap.add_argument("--out", type=Path, required=True, help="an empty or new folder for the links and the models")
    ap.add_argument("--calibration", type=int, default=64, help="training images for the activation ranges")
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty")
    calib, labelled, n_test = link_parts(args.run, args.out, args.calibration)
    report = export_int8(args.run / "train" / "model.safetensors", args.out / "model.onnx", calib, labelled,
                         with_features=True, n_calibration=args.calibration)
    print(json.dumps({"run": str(args.run), "test_images": n_test, **report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

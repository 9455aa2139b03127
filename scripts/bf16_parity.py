"""How far bf16 inference (``--precision bf16``) is from fp32 for one trained model, on real images.

Both predictors read the same images (a run's test part when ``--split`` names its ``split.json``, else every
image of ``--data`` up to ``--limit``) and print the largest and mean |probability difference| and the share of
images whose most probable class agrees.

    python scripts/bf16_parity.py --checkpoint RUN/train/model.safetensors --data ../shared/data/siim-covid19 \\
        --split RUN/split.json --limit 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deeppneumonia.data.imageio import read_image
from deeppneumonia.data.sources import load_source, resolve_data_path
from deeppneumonia.inference.predictor import Predictor


def parity(checkpoint: Path, paths: list[Path], batch: int = 32) -> dict[str, float]:
    """Max and mean |p_bf16 - p_fp32| and the agreement of the most probable class over ``paths``."""
    p32 = Predictor.from_checkpoint(checkpoint, "cpu", "fp32")
    p16 = Predictor.from_checkpoint(checkpoint, "cpu", "bf16")
    x = torch.cat([p32.preprocess(read_image(p).pixels) for p in paths])
    a = np.concatenate([p32.probabilities(x[i:i + batch]) for i in range(0, len(x), batch)])
    b = np.concatenate([p16.probabilities(x[i:i + batch]) for i in range(0, len(x), batch)])
    d = np.abs(a - b)
    return {"images": len(paths), "max_abs_prob_diff": float(d.max()), "mean_abs_prob_diff": float(d.mean()),
            "class_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", required=True, help="the data set (folder, CSV or sample:NAME)")
    ap.add_argument("--split", type=Path, default=None, help="a run's split.json: score its test part")
    ap.add_argument("--limit", type=int, default=400)
    args = ap.parse_args(argv)
    records = load_source(resolve_data_path(args.data), "auto").records
    if args.split is not None:
        by_id = {r.image_id: r for r in records}
        wanted = json.loads(args.split.read_text())["test"]
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise SystemExit(f"{args.split}: {len(missing)} test image id(s) are not in {args.data} (e.g. "
                             f"{missing[0]!r}): the split belongs to another data set")
        records = [by_id[i] for i in wanted]
    r = parity(args.checkpoint, [rec.path for rec in records[:args.limit]])
    print(f"{r['images']} images: max |prob diff| {r['max_abs_prob_diff']:.4f}, mean {r['mean_abs_prob_diff']:.5f}, "
          f"same most probable class {r['class_agreement']:.4f}")


if __name__ == "__main__":
    main()

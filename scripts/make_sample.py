"""Build the small sample shipped inside the package (src/deeppneumonia/sample/) from ../shared/data.

NIH ChestX-ray14 (no restriction on use; cite Wang et al. 2017): 200 images, one per patient: every
image with a lesion box, every 'No Finding' image, the rest drawn at random (seed 0); 128 px PNG.
Kermany pediatric pneumonia (CC BY 4.0; Kermany et al., Cell 2018): 250 NORMAL + 375 PNEUMONIA drawn at
random (seed 0), 128 px JPEG quality 85: the quick demo's data (easy enough to learn in a few CPU minutes).
Run: python scripts/make_sample.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path

from PIL import Image

SIZE = 128
KERMANY = {"NORMAL": 250, "PNEUMONIA": 375}  # the data set's imbalance (1:2.9) softened to 1:1.5
JPEG_QUALITY = 85


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/data")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/deeppneumonia/sample")
    args = ap.parse_args()
    rng = random.Random(0)
    for part in ("nih", "kermany"):  # README.md stays
        shutil.rmtree(args.out / part, ignore_errors=True)

    nih_in, nih_out = args.shared / "nih-chestxray14-sample", args.out / "nih"
    (nih_out / "images").mkdir(parents=True)
    with (nih_in / "labels.csv").open() as fh:
        rows = list(csv.reader(fh))
    header, rows = rows[0], rows[1:]
    with (nih_in / "boxes.csv").open() as fh:
        boxes = list(csv.DictReader(fh))
    boxed = {b["Image Index"] for b in boxes}
    keep = [r for r in rows if r[0] in boxed or r[1] == "No Finding"]
    rest = [r for r in rows if r not in keep]
    keep += rng.sample(rest, 200 - len(keep))
    keep.sort(key=lambda r: r[0])
    for r in keep:
        img = Image.open(nih_in / "images" / r[0]).convert("L")
        scale = SIZE / img.width
        img.resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(nih_out / "images" / r[0], optimize=True)
    with (nih_out / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(keep)
    kept = {r[0] for r in keep}
    with (nih_out / "boxes.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(boxes[0].keys()))
        w.writeheader()
        for b in boxes:
            if b["Image Index"] in kept:
                b = dict(b)
                for k in ("x", "y", "w", "h"):
                    b[k] = f"{float(b[k]) * scale:.1f}"
                w.writerow(b)

    k_in, k_out = args.shared / "kermany-pneumonia/train", args.out / "kermany"
    for cls in ("NORMAL", "PNEUMONIA"):
        (k_out / cls).mkdir(parents=True)
        files = sorted((k_in / cls).iterdir())
        for f in rng.sample(files, KERMANY[cls]):
            Image.open(f).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(
                k_out / cls / f.name, quality=JPEG_QUALITY, optimize=True)


if __name__ == "__main__":
    main()

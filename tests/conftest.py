"""Shared fixtures: synthetic data sets in every supported layout, made in tmp folders (no ../shared)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def save_grey(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def lesion_image(rng: np.random.Generator, size: int, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Noisy grey background with an optional bright blob filling ``box`` (x, y, w, h)."""
    img = rng.normal(90, 12, (size, size)).clip(0, 255)
    if box is not None:
        x, y, w, h = box
        img[y:y + h, x:x + w] += 110
    return img.clip(0, 255).astype(np.uint8)


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    """Write ``rows`` (dicts with the same keys, in column order) as a CSV with a header; returns ``path``."""
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def make_lesion_csv(root: Path, n: int = 48, size: int = 64, seed: int = 0) -> Path:
    """Generic-CSV data set: 'lesion' images carry a bright box (and its box), 'clear' ones none."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "lesion" if i % 2 else "clear"
        box = None
        if label == "lesion":
            w, h = rng.integers(size // 5, size // 3, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            box = (int(x), int(y), int(w), int(h))
        name = f"img/{i:03d}.png"
        save_grey(root / name, lesion_image(rng, size, box))
        rows.append({"path": name, "label": label, "patient_id": f"p{i // 2}",
                     "boxes": json.dumps([list(box)]) if box else ""})
    return write_csv(root / "labels.csv", rows)


@pytest.fixture
def lesion_csv(tmp_path: Path) -> Path:
    return make_lesion_csv(tmp_path / "lesions")


def make_siim(root: Path, size: int = 64) -> Path:
    """A miniature SIIM layout: 4 studies (one with two images), boxes in original pixels, bad rows."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    studies = [("s1", 1), ("s2", 0), ("s3", 2), ("s4", 3)]
    with (root / "train_study_level.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance",
                    "Atypical Appearance"])
        for sid, c in studies:
            w.writerow([f"{sid}_study"] + [int(i == c) for i in range(4)])
        w.writerow(["bad_study", 1, 1, 0, 0])  # two classes set: reported
    # image id, study, patient, original size, boxes (original pixels)
    images = [("a1", "s1", "P1", (1000, 2000), [{"x": 100.0, "y": 200.0, "width": 300.0, "height": 400.0}]),
              ("a2", "s1", "P1", (1000, 1000), []),
              ("b1", "s2", "P2", (500, 500), []),
              ("c1", "s3", "P3", (800, 800), [{"x": 700.0, "y": 700.0, "width": 200.0, "height": 200.0}]),
              ("d1", "s4", "P4", (640, 640), [{"x": 0.0, "y": 0.0, "width": 64.0, "height": 64.0}]),
              ("e1", "s9", "P5", (640, 640), []),  # unknown study: reported
              ("f1", "s4", "P4", (640, 640), [])]  # image file missing: reported
    with (root / "image_meta.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "patient_id", "original_width", "original_height"])
        for iid, _, pid, (ow, oh), _ in images:
            w.writerow([iid, pid, ow, oh])
    with (root / "train_image_level.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "boxes", "label", "StudyInstanceUID"])
        for iid, sid, _, _, boxes in images:
            w.writerow([f"{iid}_image", str(boxes) if boxes else "", "none 1 0 0 1 1", sid])
    for iid, *_ in images:
        if iid != "f1":
            save_grey(root / "images" / f"{iid}.jpg", lesion_image(rng, size, None), "JPEG")
    return root


def make_multilabel_csv(root: Path, n: int = 48, size: int = 48, seed: int = 0) -> Path:
    """Generic CSV with two findings per image as columns: A = bright square, B = dark bar; some labels unknown."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = bool(rng.random() < 0.5), bool(rng.random() < 0.3)
        img = rng.normal(110, 10, (size, size))
        if a:
            x, y = rng.integers(0, size - size // 4, 2)
            img[y:y + size // 4, x:x + size // 4] += 100
        if b:
            y = int(rng.integers(0, size - 4))
            img[y:y + 4, :] -= 80
        name = f"img/{i:03d}.png"
        save_grey(root / name, img.clip(0, 255).astype(np.uint8))
        rows.append({"path": name, "A": int(a), "B": "" if i % 7 == 3 else int(b), "patient_id": f"p{i}"})
    return write_csv(root / "labels.csv", rows)

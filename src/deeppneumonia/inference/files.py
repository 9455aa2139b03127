"""`deeppneumonia predict`: files, folders and DICOM in; one row per image out (CSV or JSON).

Bad files (unreadable, truncated, not an image, too large) are reported in the output with the reason
and skipped; they never stop the run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deeppneumonia.data.imageio import read_image
from deeppneumonia.data.sources._common import IMAGE_SUFFIXES
from deeppneumonia.errors import ConfigError, ImageReadError
from deeppneumonia.inference.predictor import Predictor


def iter_images(paths: Sequence[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


def predict_paths(checkpoint: str | Path, paths: Sequence[str | Path], heatmaps: Path | None = None,
                  device: str = "auto", progress: bool = True, explain_class: str | None = None,
                  layer: str = "layer4") -> list[dict[str, Any]]:
    """Predict every image of ``paths`` (files, or folders searched recursively); one row per file.

    Args:
        checkpoint: a ``model.safetensors``.
        paths: image files and folders.
        heatmaps: a folder for Grad-CAM overlays (``<stem>_gradcam.png``), or None for none.
        device: ``auto``, ``cpu``, ``cuda``, ...
        progress: show a progress bar.
        explain_class: the class whose Grad-CAM is drawn (default: the predicted one).
        layer: the Grad-CAM layer.

    Returns:
        Rows with ``path``, ``p_<class>`` per class, ``prediction``, ``error`` (empty when the file was read) and,
        with ``heatmaps``, ``heatmap`` (the overlay's path). A file that cannot be read gets a row with its error.

    Raises:
        ConfigError: ``explain_class`` is not one of the model's classes.
    """
    pred = Predictor.from_checkpoint(checkpoint, device)
    if explain_class is not None and explain_class not in pred.classes:
        raise ConfigError(f"--class {explain_class!r} is not a class of this model; its classes: {pred.classes}")
    if heatmaps is not None:
        heatmaps.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    files = list(iter_images(paths))
    for path in tqdm(files, desc="predicting", unit="img", disable=not progress):
        try:
            pixels = read_image(path).pixels
        except ImageReadError as exc:
            rows.append({"path": str(path), "error": str(exc)})
            continue
        x = pred.preprocess(pixels)
        probs = pred.probabilities(x)[0]
        row: dict[str, Any] = {"path": str(path), **{f"p_{c}": round(float(p), 5) for c, p in zip(pred.classes, probs,
                                                                                                  strict=True)},
                               "prediction": "|".join(pred.labels(probs[None])[0]), "error": ""}
        if heatmaps is not None:
            from deeppneumonia.inference.explain import gradcam, overlay

            cls = pred.classes.index(explain_class) if explain_class is not None else int(probs.argmax())
            heat = gradcam(pred.model, x, cls, layer)[0]
            small = pred.pre.resize_pixels(pixels)
            target = heatmaps / f"{path.stem}_gradcam.png"
            overlay(small, heat, caption=f"{pred.classes[cls]} {probs[cls]:.2f}").save(target)
            row["heatmap"] = str(target)
        rows.append(row)
    return rows


def write_predictions(rows: list[dict[str, Any]], out: Path | None, fmt: str = "csv") -> None:
    fh = out.open("w", newline="") if out else sys.stdout
    try:
        if fmt == "json":
            json.dump(rows, fh, indent=1)
            fh.write("\n")
        else:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    finally:
        if out:
            fh.close()

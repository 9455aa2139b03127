"""`deeppneumonia predict`: files, folders and DICOM in; one row per input file out (CSV or JSON).

* **One row per file, always.** Folders are walked recursively (symbolic links to folders are not followed);
  every entry that is not a folder gets a row: files with an image extension and files whose content
  :func:`~deeppneumonia.data.imageio.detect_format` recognises (an extensionless DICOM) are predicted, and the
  rest (not an image, a FIFO, a dangling link, unreadable) get a row with the reason in ``error``. A bad file
  never stops the run.
* **Batched.** Files are decoded in a thread pool (decoders release the GIL) and go through the network
  ``batch_size`` at a time; each row is what a batch of one gives (``tests/inference/test_predict_export.py``).
* **Heatmaps** are written as ``<name>_<method>.png``; files with the same stem in different folders get names
  built from their relative path, so no overlay overwrites another.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deeppneumonia.data.imageio import read_image
from deeppneumonia.errors import CheckpointError, ConfigError, ImageReadError
from deeppneumonia.inference.onnx import OnnxPredictor
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.transforms.preprocessing import Preprocessing

DEFAULT_BATCH_SIZE = 16


def load_predictor(path: str | Path, device: str = "auto", runtime: str = "torch",
                   precision: str = "fp32", spinning: bool = True) -> Predictor | OnnxPredictor:
    """A :class:`~deeppneumonia.inference.predictor.Predictor` for a ``.safetensors`` checkpoint, an
    :class:`OnnxPredictor` for an exported ``.onnx`` (``device`` and ``precision`` apply to PyTorch only: an ONNX
    model runs in the precision it was exported in; ``auto`` leaves it so, ``bf16`` is an error).

    With ``runtime="onnxruntime"`` a ``.safetensors`` checkpoint is exported (with features, parity-checked) into
    a temporary folder at load time and run by ONNX Runtime; its identity (file, SHA-256) stays the checkpoint's.
    ``spinning=False``: ONNX Runtime's threads sleep between parallel sections (see ``onnx.ort_session``).
    """
    if precision not in ("fp32", "auto") and (runtime != "torch" or Path(path).suffix.lower() == ".onnx"):
        raise ConfigError(f"precision {precision}: applies to PyTorch only; an ONNX model runs as exported (fp32, or "
                          "int8 with export --quantize int8)")
    if Path(path).suffix.lower() == ".onnx":
        return OnnxPredictor.from_file(path, spinning=spinning)
    if runtime == "onnxruntime":
        from deeppneumonia.inference.export import exported_predictor

        return exported_predictor(path, spinning)
    if runtime != "torch":
        raise CheckpointError(f"unknown runtime {runtime!r}; choose torch or onnxruntime")
    return Predictor.from_checkpoint(path, device, precision)


def iter_images(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Every non-folder entry under ``paths`` (folders walked recursively, sorted; links to folders not followed),
    and every path given that is not a folder (even one that does not exist: it gets a row with its error)."""
    for p in map(Path, paths):
        if p.is_dir():
            found: list[Path] = []
            for root, dirs, names in os.walk(p, followlinks=False):
                dirs.sort()
                found += [Path(root) / n for n in names]
                # a symbolic link to a folder is listed in dirs but not walked: report it as an entry
                found += [Path(root) / d for d in dirs if (Path(root) / d).is_symlink()]
            yield from sorted(found)
        else:
            yield p


def heatmap_names(files: Sequence[Path], roots: Sequence[str | Path], suffix: str) -> list[str]:
    """One unique overlay file name per input: ``<stem><suffix>`` unless two inputs share it; then the path
    relative to the folder argument, ``/`` replaced by ``__``; then a counter."""
    def relative(f: Path) -> str:
        """``f`` relative to the first root that contains it, ``/`` as ``__`` (else its last two parts)."""
        for r in map(Path, roots):
            try:
                rel = f.relative_to(r)
            except ValueError:
                continue
            if rel.parts:
                return "__".join(rel.with_suffix("").parts)
        return "__".join(f.with_suffix("").parts[-2:])

    stems = [f.stem for f in files]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = [f"{s}{suffix}" if counts[s] == 1 else f"{relative(f)}{suffix}" for s, f in zip(stems, files, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else n.replace(suffix, f"-{k + 1}{suffix}"))
    return out


def _load(path: Path, pre: Preprocessing) -> np.ndarray | str:
    """The image at the network's size ((S, S) uint8, as the cache stores it), or why it cannot be predicted."""
    try:
        return pre.resize_pixels(read_image(path).pixels)
    except ImageReadError as exc:
        return str(exc)
    except (OSError, ValueError, MemoryError) as exc:  # anything a decoder raises outside its own error types
        return f"{path}: cannot read: {type(exc).__name__}: {exc}"


def predict_paths(checkpoint: str | Path, paths: Sequence[str | Path], heatmaps: Path | None = None,
                  device: str = "auto", progress: bool = True, explain_class: str | None = None,
                  layer: str = "layer4", method: str = "gradcam", batch_size: int = DEFAULT_BATCH_SIZE,
                  workers: int | None = None, runtime: str = "torch", precision: str = "fp32") -> list[dict[str, Any]]:
    """Predict every file of ``paths`` (files, or folders searched recursively); one row per file.

    Args:
        checkpoint: a ``model.safetensors``, or an exported ``model.onnx`` (with its ``model.json``).
        paths: image files and folders.
        heatmaps: a folder for CAM overlays (``<name>_<method>.png``), or None for none.
        device: ``auto``, ``cpu``, ``cuda``, ... (PyTorch checkpoints).
        progress: show a progress bar.
        explain_class: the class whose heatmap is drawn (default: the decided one).
        layer: the CAM layer.
        method: the CAM method (``explain.METHODS``).
        batch_size: images per forward pass.
        workers: decoding threads (default: the CPU count, at most 8).
        runtime: ``torch``, or ``onnxruntime`` to export a ``.safetensors`` checkpoint first and run ONNX Runtime.
        precision: ``fp32``, ``bf16`` or ``auto`` (PyTorch only; see :meth:`Predictor.from_checkpoint`).

    Returns:
        Rows in input order with ``path``, ``p_<class>`` per class, ``prediction``, ``error`` (empty when the file
        was read) and, with ``heatmaps``, ``heatmap`` (the overlay's path). A file that cannot be read gets a
        row with its error.

    Raises:
        ConfigError: ``explain_class`` is not one of the model's classes, a bad method or batch size, or heatmaps
            asked of an ONNX model exported without features.
    """
    from deeppneumonia.inference.explain import check_method

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    try:
        check_method(method)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    pred = load_predictor(checkpoint, device, runtime, precision)
    if explain_class is not None and explain_class not in pred.classes:
        raise ConfigError(f"--class {explain_class!r} is not a class of this model; its classes: {pred.classes}")
    if heatmaps is not None and not pred.supports_heatmaps(layer, method):
        raise ConfigError(f"{checkpoint}: this model cannot draw {method} heatmaps at {layer} (an ONNX model needs "
                          "`export --with-features`, and gives layer4 Grad-CAM only)")
    if heatmaps is not None:
        heatmaps.mkdir(parents=True, exist_ok=True)
    files = list(iter_images(paths))
    names = heatmap_names(files, paths, f"_{method.replace('+', 'p')}.png") if heatmaps is not None else []
    rows: list[dict[str, Any]] = [{"path": str(f)} for f in files]
    cls = None if explain_class is None else pred.classes.index(explain_class)
    workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(files), desc="predicting", unit="img", disable=not progress)
    chunks = [list(range(s, min(s + batch_size, len(files)))) for s in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(_load, files[i], pred.pre) for i in chunks[0]] if chunks else []
        for n, chunk in enumerate(chunks):
            decoded = [f.result() for f in pending]
            # the next chunk decodes while this one is in the network
            pending = [pool.submit(_load, files[i], pred.pre) for i in chunks[n + 1]] if n + 1 < len(chunks) else []
            good = [(i, px) for i, px in zip(chunk, decoded, strict=True) if not isinstance(px, str)]
            for i, px in zip(chunk, decoded, strict=True):
                if isinstance(px, str):
                    rows[i]["error"] = px
            if good:
                _predict_chunk(pred, good, rows, heatmaps, names, cls, layer, method)
            bar.update(len(chunk))
    bar.close()
    return rows


def _predict_chunk(pred: Any, good: list[tuple[int, np.ndarray]], rows: list[dict[str, Any]], heatmaps: Path | None,
                   names: list[str], cls: int | None, layer: str, method: str) -> None:
    """Predict one chunk of decoded images and fill their ``rows`` in place.

    ``good`` holds (row index, cache-size uint8 image). Each row gets ``p_<class>``, ``prediction`` and ``error``
    (an error for non-finite probabilities); with ``heatmaps`` an overlay of class ``cls`` (None: the
    explained class) is saved under ``names[i]`` and its path stored as ``heatmap``.
    """
    x = pred.preprocess_uint8(torch.from_numpy(np.stack([g[1] for g in good]))[:, None])
    probs, heat, idx = pred.predict(x, heatmaps is not None, None if cls is None else [cls] * len(good), layer, method)
    labels = pred.labels(probs)
    for k, (i, small) in enumerate(good):
        if not np.isfinite(probs[k]).all():
            rows[i]["error"] = f"{rows[i]['path']}: the model gave non-finite probabilities for this image"
            continue
        rows[i].update({f"p_{c}": round(float(p), 5) for c, p in zip(pred.classes, probs[k], strict=True)})
        rows[i]["prediction"] = "|".join(labels[k])
        rows[i]["error"] = ""
        if heatmaps is not None and heat is not None:
            from deeppneumonia.inference.explain import overlay

            c = int(idx[k])
            target = heatmaps / names[i]
            overlay(small, heat[k], caption=f"{pred.classes[c]} {probs[k, c]:.2f}").save(target)
            rows[i]["heatmap"] = str(target)


def check_output(out: Path | None) -> None:
    """Refuse an ``--out`` that cannot be written before any work is done; create its missing parent folders.

    Raises:
        ConfigError: the path is a folder, or its parent cannot be created or written.
    """
    if out is None:
        return
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name, e.g. {out / 'predictions.csv'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create its folder: {exc.strerror or exc}") from exc
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"--out {out}: not writable")


def write_predictions(rows: list[dict[str, Any]], out: Path | None, fmt: str = "csv") -> None:
    """Write prediction rows to ``out`` (None: stdout) as CSV or JSON (``fmt``).

    CSV columns: path, the probabilities, prediction, error, heatmap, then any other keys; missing cells are empty.
    """
    fh = out.open("w", newline="") if out else sys.stdout
    try:
        if fmt == "json":
            json.dump(rows, fh, indent=1)
            fh.write("\n")
        else:
            seen = list(dict.fromkeys(k for r in rows for k in r))
            first = ["path"] + [k for k in seen if k.startswith("p_")] + ["prediction", "error", "heatmap"]
            keys = [k for k in first if k in seen] + [k for k in seen if k not in first]
            w = csv.DictWriter(fh, fieldnames=keys, restval="")
            w.writeheader()
            w.writerows(rows)
    finally:
        if out:
            fh.close()

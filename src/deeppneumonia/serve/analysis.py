"""One image in memory -> one JSON-ready answer: decode, predict, explain (Grad-CAM overlay and derived boxes).

No web framework here: :mod:`deeppneumonia.serve.app` puts an :class:`Analyzer` behind HTTP, and anything else
(a notebook, a batch job) can call :meth:`Analyzer.analyse` on bytes directly.

* Decoding goes through :func:`~deeppneumonia.data.imageio.read_image_bytes`: the format comes from the magic
  bytes, the dimensions are checked from the header before any pixel is decoded, nothing is written to disk.
* The model is used under a lock: one forward (and Grad-CAM, which registers hooks on the model) at a time.
  Decoding and PNG encoding run outside the lock, so several requests can decode while one is in the model.
* Boxes are the bounding boxes of the connected components of the Grad-CAM map of the explained class
  (the top class), thresholded at ``box_threshold`` of its range
  (:func:`~deeppneumonia.evaluation.localization.heatmap_boxes`), mapped back to original-image pixels.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import Any

import numpy as np
from PIL import Image

from deeppneumonia.data.imageio import MAX_PIXELS, MAX_SIDE, DecodedImage, read_image_bytes
from deeppneumonia.data.manifest import Box
from deeppneumonia.inference.predictor import Predictor

DEFAULT_OVERLAY_SIDE = 512
"""Longest side, in pixels, of the Grad-CAM overlay PNG (the original image is scaled to it)."""


class Analyzer:
    """A loaded predictor plus the limits and options of the analysis of one image.

    Args:
        predictor: the classifier (loaded once, shared by every call).
        max_pixels: largest accepted ``width * height`` (decompression-bomb guard, checked from the header).
        max_side: largest accepted width or height.
        heatmap: whether Grad-CAM is available at all (needs the ``explain`` extra).
        layer: the layer Grad-CAM weights.
        overlay_side: longest side of the overlay PNG.
        box_threshold: fraction of the heatmap's range above which pixels form boxes.
    """

    def __init__(self, predictor: Predictor, *, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                 heatmap: bool = True, layer: str = "layer4", overlay_side: int = DEFAULT_OVERLAY_SIDE,
                 box_threshold: float = 0.5) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.heatmap = heatmap
        self.layer = layer
        self.overlay_side = overlay_side
        self.box_threshold = box_threshold
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """What the model is and what it expects (classes, task, input size, preprocessing)."""
        p = self.predictor
        pre = p.pre
        thresholds = p.thresholds
        return {"classes": p.classes, "task": p.meta["task"], "arch": p.meta["arch"], "size": p.size,
                "resize": pre.resize, "thresholds": None if thresholds is None else thresholds.tolist(),
                "heatmap": self.heatmap, "gradcam_layer": self.layer,
                "versions": p.meta.get("versions", {})}

    def decode(self, data: bytes, name: str = "upload") -> DecodedImage:
        """Decode PNG / JPEG / DICOM bytes under this analyzer's dimension limits (raises ImageReadError)."""
        return read_image_bytes(data, name=name, max_pixels=self.max_pixels, max_side=self.max_side)

    def analyse(self, data: bytes, name: str = "upload", heatmap: bool = True) -> dict[str, Any]:
        """Decode ``data`` and return probabilities, labels and (with ``heatmap``) the overlay and boxes.

        Raises:
            ImageReadError (or a subclass): the bytes are not a readable image within the limits.
        """
        t0 = time.perf_counter()
        img = self.decode(data, name)
        t1 = time.perf_counter()
        p = self.predictor
        want_heat = heatmap and self.heatmap
        heat: np.ndarray | None = None
        with self._lock:
            x = p.preprocess(img.pixels)
            probs = p.probabilities(x)[0]
            top = int(probs.argmax())
            t2 = time.perf_counter()
            if want_heat:
                from deeppneumonia.inference.explain import gradcam

                heat = gradcam(p.model, x, top, self.layer)[0]
        t3 = time.perf_counter()
        h, w = img.pixels.shape
        thresholds = p.thresholds
        result: dict[str, Any] = {
            "classes": p.classes,
            "probabilities": [float(v) for v in probs],
            "labels": p.labels(probs[None])[0],
            "thresholds": None if thresholds is None else thresholds.tolist(),
            "task": p.meta["task"],
            "image": {"width": w, "height": h, "format": img.info.format, "channels": img.info.channels,
                      "bit_depth": img.info.bit_depth},
            "heatmap": None,
            "boxes": None,
        }
        if heat is not None:
            boxes = self._boxes(heat, w, h)
            png, (ow, oh) = self._overlay_png(img.pixels, heat, boxes)
            result["boxes"] = [{"x": round(b.x, 1), "y": round(b.y, 1), "w": round(b.w, 1), "h": round(b.h, 1)}
                               for b in boxes]
            result["heatmap"] = {"class": p.classes[top], "layer": self.layer, "box_threshold": self.box_threshold,
                                 "width": ow, "height": oh, "png_base64": base64.b64encode(png).decode("ascii")}
        t4 = time.perf_counter()
        result["timing_ms"] = {"decode": round((t1 - t0) * 1e3, 2), "model": round((t2 - t1) * 1e3, 2),
                               "gradcam": round((t3 - t2) * 1e3, 2) if heat is not None else None,
                               "total": round((t4 - t0) * 1e3, 2)}
        return result

    def _boxes(self, heat: np.ndarray, width: int, height: int) -> list[Box]:
        """Heatmap components (network grid) -> boxes in original-image pixels, clipped to the image."""
        from deeppneumonia.evaluation.localization import heatmap_boxes

        sx, sy, dx, dy = self.predictor.geometry(width, height)
        out = []
        for bx, by, bw, bh in heatmap_boxes(heat, self.box_threshold):
            x0, y0 = max(0.0, (bx - dx) / sx), max(0.0, (by - dy) / sy)
            x1, y1 = min(float(width), (bx + bw - dx) / sx), min(float(height), (by + bh - dy) / sy)
            if x1 > x0 and y1 > y0:
                out.append(Box(x0, y0, x1 - x0, y1 - y0))
        return out

    def _overlay_png(self, pixels: np.ndarray, heat: np.ndarray, boxes: list[Box]) -> tuple[bytes, tuple[int, int]]:
        """The image scaled so its longest side is ``overlay_side``, heat blended, boxes drawn; PNG bytes."""
        from deeppneumonia.inference.explain import overlay

        h, w = pixels.shape
        s = self.overlay_side / max(w, h)
        ow, oh = max(1, round(w * s)), max(1, round(h * s))
        grey = np.asarray(Image.fromarray(np.ascontiguousarray(pixels, np.float32), "F")
                          .resize((ow, oh), Image.Resampling.BILINEAR))
        grey_u8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        # the part of the network's grid that holds the image (all of it for squash, less the bands for letterbox)
        sx, sy, dx, dy = self.predictor.geometry(w, h)
        size = heat.shape[0]
        x0, y0 = round(dx), round(dy)
        x1, y1 = min(size, max(x0 + 1, round(dx + w * sx))), min(size, max(y0 + 1, round(dy + h * sy)))
        shown = [Box(b.x * s, b.y * s, b.w * s, b.h * s) for b in boxes]
        pic = overlay(grey_u8, np.ascontiguousarray(heat[y0:y1, x0:x1]), pred_boxes=shown, min_size=1)
        buf = io.BytesIO()
        pic.save(buf, format="PNG", optimize=False, compress_level=6)
        return buf.getvalue(), (pic.width, pic.height)

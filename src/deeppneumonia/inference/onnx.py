"""Run an exported model (``deeppneumonia export``) with ONNX Runtime behind the predictor's interface.

:class:`OnnxPredictor` reads ``model.onnx`` and the ``model.json`` written beside it (classes, task,
preprocessing, thresholds; with ``--with-features`` also the linear head's weights, so that the exact
``layer4`` CAM comes from the same forward pass) and offers what :class:`~deeppneumonia.inference.predictor.Predictor`
offers to ``predict`` and the service: ``preprocess``, ``probabilities``, ``labels``, ``predict``. It needs no
PyTorch model; fp32 and int8 (``export --quantize int8``) graphs load the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deeppneumonia.errors import CheckpointError
from deeppneumonia.inference.predictor import DecisionMixin, file_sha256


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations, ``threads`` intra-op threads (default: all).

    ``spinning=False`` makes the intra-op threads sleep instead of spin-waiting between parallel sections: for
    a process whose other threads need the same cores (the service decodes uploads beside the model), where
    the spinning takes CPU from them (docs/serving.md).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass
class OnnxPredictor(DecisionMixin):
    """An exported classifier run by ONNX Runtime (CPU). Build it with :meth:`from_file`."""

    session: Any
    meta: dict[str, Any]
    source: Path | None = None
    sha256: str = ""
    format: str = "onnx"

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None, spinning: bool = True) -> OnnxPredictor:
        """Load ``path`` (.onnx) and its metadata (``path`` with the suffix ``.json``); ``threads`` and
        ``spinning`` as in :func:`ort_session`.

        Raises:
            CheckpointError: the file or its metadata is missing or unreadable.
        """
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX model not found")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path}: the metadata written beside {path.name} by `deeppneumonia export` "
                                  f"is missing or unreadable ({exc})") from exc
        if not isinstance(meta, dict) or "classes" not in meta or "task" not in meta:
            raise CheckpointError(f"{meta_path}: not deeppneumonia export metadata (no classes / task)")
        try:
            session = ort_session(path, threads, spinning)
        except ImportError as exc:
            raise CheckpointError("running an .onnx model needs onnxruntime: pip install onnxruntime") from exc
        except Exception as exc:  # onnxruntime raises its own types for a corrupt graph
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
        return cls(session, meta, path, file_sha256(path))

    @property
    def outputs(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    @property
    def precision(self) -> str:
        """What the exported model computes in: ``fp32``, or ``int8`` for a quantized export."""
        return str(self.meta.get("onnx", {}).get("precision", "fp32"))

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """(H, W) float [0, 1] -> (1, 1, S, S) normalised network input (CPU)."""
        return self.pre.from_pixels(pixels, "cpu")

    def preprocess_uint8(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) uint8 cache images -> normalised input."""
        return self.pre.from_uint8(images, "cpu")

    def _run(self, x: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the session on (B, 1, S, S) input: (logits, CAM features or None without them)."""
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        got = self.session.run(None, {"image": np.ascontiguousarray(arr, np.float32)})
        return got[0], (got[1] if len(got) > 1 else None)

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> probabilities (softmax, or sigmoid for multi-label)."""
        t = torch.from_numpy(np.asarray(logits, np.float32))
        return (torch.sigmoid(t) if self.multilabel else torch.softmax(t, 1)).numpy()  # type: ignore[no-any-return]

    def probabilities(self, x: Tensor | np.ndarray) -> np.ndarray:
        """(B, 1, S, S) normalised input -> (B, C) probabilities (softmax, or sigmoid for multi-label)."""
        return self._probs(self._run(x)[0])

    def supports_heatmaps(self, layer: str = "layer4", method: str = "gradcam") -> bool:
        """Heatmaps need an export ``--with-features`` (the exact CAM at ``layer4``, Grad-CAM / HiResCAM)."""
        return ("cam" in self.meta and "features" in self.outputs and layer == "layer4"
                and method in ("gradcam", "hirescam"))

    def predict(self, x: Tensor | np.ndarray, heatmaps: bool = False, class_index: Sequence[int] | None = None,
                layer: str = "layer4", method: str = "gradcam") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """As :meth:`Predictor.predict <deeppneumonia.inference.predictor.Predictor.predict>`."""
        if heatmaps and not self.supports_heatmaps(layer, method):
            raise CheckpointError(f"{self.source}: heatmaps from an ONNX model need an export with --with-features, "
                                  f"at layer4 with gradcam or hirescam (asked: {layer}, {method})")
        logits, feats = self._run(x)
        probs = self._probs(logits)
        idx = self.explained_class(probs) if class_index is None else np.asarray(class_index)
        if not heatmaps or feats is None:
            return probs, None, idx
        from deeppneumonia.inference.explain import cam_from_features_np

        size = (int(np.shape(x)[-2]), int(np.shape(x)[-1]))
        return probs, cam_from_features_np(feats, np.asarray(self.meta["cam"]["fc_weight"]), idx.tolist(), size), idx

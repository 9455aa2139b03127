"""Export the inference network (a plain classifier: no MGACR, no projector) to ONNX, with a parity check.

The exported graph takes the *normalised* (B, 1, S, S) input the predictor builds and returns logits, and,
with ``with_features``, also the activations of the Grad-CAM layer so that a runtime without PyTorch can
draw class activation maps (CAM = ReLU(sum_c w_c * A_c) with the fc weights). The checkpoint's metadata
(classes, preprocessing, thresholds) is written beside the model as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deeppneumonia.errors import CheckpointError
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.models.resnet import XRayResNet


class _WithFeatures(nn.Module):
    def __init__(self, model: XRayResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        from deeppneumonia.models.cam import cam_features


        last = cam_features(self.model, x)  # layer4, or the aggregated map of an MSA network (IAM)
        return self.model.forward_head(last), last  # type: ignore[arg-type]


def export_onnx(checkpoint: str | Path, out: str | Path, with_features: bool = False, opset: int = 18,
                atol: float = 1e-4) -> dict[str, Any]:
    """Write ``out`` (.onnx) and ``out``.json; return the parity report against PyTorch (raises if it fails)."""
    pred = Predictor.from_checkpoint(checkpoint, device="cpu")
    if with_features and not isinstance(pred.model.fc, nn.Linear):
        raise CheckpointError(f"{checkpoint}: --with-features exports the CAM layer of a plain classifier (fc weights); "
                              f"a {pred.meta['arch']} network has no such head. Export without it.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model: nn.Module = _WithFeatures(pred.model) if with_features else pred.model
    model.eval()
    s = pred.size
    example = torch.randn(2, 1, s, s)
    names = ["logits", "features"] if with_features else ["logits"]
    torch.onnx.export(model, (example,), str(out), input_names=["image"], output_names=names, opset_version=opset,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), dynamo=True,
                      external_data=False, verbose=False)
    meta = {k: v for k, v in pred.meta.items() if k != "config"}
    meta["onnx"] = {"input": "image (B, 1, S, S), normalised: (x / 255 - mean) / std", "outputs": names}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    report = parity(out, model, s, atol)
    if not report["ok"]:
        raise RuntimeError(f"ONNX output differs from PyTorch by {report['max_abs_diff']:.2e} > {atol}")
    return report


def parity(onnx_path: Path, model: nn.Module, size: int, atol: float = 1e-4, n: int = 4) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    ref_t = ref if isinstance(ref, tuple) else (ref,)
    got = session.run(None, {"image": x.numpy()})
    # relative to each output's scale: logits are O(1), pooled-stage activations can be O(10)
    diff = max(float((np.abs(g - r.numpy()) / (1.0 + np.abs(r.numpy()))).max()) for g, r in zip(got, ref_t, strict=True))
    return {"max_abs_diff": diff, "ok": diff <= atol, "atol": atol, "batch": n}

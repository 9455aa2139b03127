"""deeppneumonia: lesion-aware, class-imbalance-robust chest X-ray classification.

Implements "Deep Pneumonia: Attention-Based Contrastive Learning for Class-Imbalanced Pneumonia Lesion
Recognition in Chest X-rays": SimCLR pre-training (Stage I), mask-guided attention with contrastive
regulation (MGACR) and the class-balanced focal loss (Stage II).

The public API (docs/api.md; every name is imported on first use, so ``import deeppneumonia`` stays fast)::

    import deeppneumonia as dp
    model = dp.load_predictor("runs/quick/train/model.safetensors")   # a Predictor
    probs = dp.predict(model, ["scan.dcm", "other.png"])               # (N, C) probabilities
    heat = dp.explain(model, "scan.dcm")                               # (1, S, S) Grad-CAM in [0, 1]

Inference: :func:`load_predictor`, :class:`Predictor`, :func:`predict`, :func:`explain`, :func:`read_image`.
Data: :func:`load_source`, :func:`split_patients`, :class:`XRayDataset` (a ``torch.utils.data.Dataset``).
Evaluation and training: :func:`evaluate`, :func:`train`, :func:`load_config`, :class:`Config`.
Errors: :class:`DeepPneumoniaError` and its kinds; :class:`MissingExtraError` names the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "load_predictor": "deeppneumonia.api", "predict": "deeppneumonia.api", "explain": "deeppneumonia.api",
    "read_image": "deeppneumonia.api", "load_source": "deeppneumonia.api", "split_patients": "deeppneumonia.api",
    "evaluate": "deeppneumonia.api", "train": "deeppneumonia.api", "TrainResult": "deeppneumonia.api",
    "ImageLike": "deeppneumonia.api",
    "Predictor": "deeppneumonia.inference.predictor",
    "EvalResult": "deeppneumonia.evaluation.runner", "evaluate_checkpoint": "deeppneumonia.evaluation.runner",
    "XRayDataset": "deeppneumonia.data.dataset",
    "Manifest": "deeppneumonia.data.manifest", "Record": "deeppneumonia.data.manifest", "Box": "deeppneumonia.data.manifest",
    "Split": "deeppneumonia.data.splits",
    "Config": "deeppneumonia.config", "load_config": "deeppneumonia.config",
    "DeepPneumoniaError": "deeppneumonia.errors", "DataError": "deeppneumonia.errors",
    "ImageReadError": "deeppneumonia.errors", "ConfigError": "deeppneumonia.errors",
    "CheckpointError": "deeppneumonia.errors", "MissingExtraError": "deeppneumonia.extras",
}

__all__ = ["__version__", *sorted(_EXPORTS)]
# Types for checkers and IDEs: __init__.pyi (a stub, so that this module imports nothing at run time and the
# import graph of scripts/import_graph.py gains no edge from the package root).

def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first access and cache it in the package namespace."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deeppneumonia' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    """The module's globals plus every lazily exported name."""
    return sorted(set(globals()) | set(_EXPORTS))

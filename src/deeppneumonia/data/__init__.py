"""Reading chest X-ray data sets: images, manifests, patient splits, masks, the cache, and a torch Dataset.

``XRayDataset`` (``data/dataset.py``) is imported lazily so that ``import deeppneumonia.data.X`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["XRayDataset"]


def __getattr__(name: str) -> Any:
    """Import ``XRayDataset`` on first access (module ``__getattr__``); other names raise AttributeError."""
    if name == "XRayDataset":
        from deeppneumonia.data.dataset import XRayDataset

        return XRayDataset
    raise AttributeError(f"module 'deeppneumonia.data' has no attribute {name!r}")

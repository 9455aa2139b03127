"""``XRayDataset``: a ``torch.utils.data.Dataset`` over a manifest or the preprocessing cache.

It lets the toolkit's data layer (DICOM with VOI LUT and MONOCHROME1, manifests of every supported layout,
patient splits, lesion masks) feed any PyTorch loop: plain, Lightning, MONAI. Images come from the
memory-mapped cache (decoded and resized once), so ``__getitem__`` is cheap and workers share the pages.

Each item is a dict::

    image   (1, S, S) float32 in [0, 1] (or normalised with ``normalize=True``)
    target  (C,) float32: one-hot for multi-class, 0/1 for multi-label, NaN = unknown
    mask    (1, S, S) float32 lesion mask: the fraction of each pixel inside a box (all 0 without boxes)
    boxes   (K, 4) float32 x, y, w, h in the S x S image's pixels (K = 0 without boxes)
    index   int: the record's position in the manifest; ``image_id`` and ``patient_id``: str

A user ``transform`` is applied to image, mask and boxes together, with one random draw:
it is called as ``transform(image, mask, boxes)`` and must return the three in that order. With torchvision
installed the three arrive as ``tv_tensors`` (``Image``, ``Mask``, ``BoundingBoxes`` in XYWH), so any
``torchvision.transforms.v2`` transform or ``v2.Compose`` works as is (photometric ones leave the mask alone);
``kornia.augmentation.AugmentationSequential(..., data_keys=["input", "mask", "bbox_xywh"])`` takes the same three
arguments (kornia is not a dependency; untested here).
A MONAI dictionary transform fits with a three-line adapter (see docs/api.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from deeppneumonia.data.cache import Cache, build_cache
from deeppneumonia.data.manifest import Manifest
from deeppneumonia.data.masks import boxes_to_mask_tensor, pad_boxes

Transform = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class XRayDataset(Dataset[dict[str, Any]]):
    """A map-style dataset of the cached images of a manifest (see the module docstring for the items).

    Args:
        source: a :class:`~deeppneumonia.data.cache.Cache`, a :class:`~deeppneumonia.data.manifest.Manifest`
            (cached at ``size`` first; decoded once, reused afterwards), or a data path / ``sample:NAME``
            (read with :func:`~deeppneumonia.data.sources.load_source`).
        indices: the records to use (e.g. ``split.train`` of :func:`~deeppneumonia.data.splits.patient_split`);
            default every image that decoded. Undecodable images are always left out.
        size: working size in pixels (square) when the cache is built here.
        cache_dir: where the cache lives.
        resize: ``squash`` or ``letterbox`` when the cache is built here.
        transform: ``transform(image, mask, boxes) -> (image, mask, boxes)``, applied to every item.
        normalize: subtract ``mean`` and divide by ``std`` after the transform (the toolkit's models expect it).
        mean: normalisation mean (the toolkit's default 0.5).
        std: normalisation standard deviation (the toolkit's default 0.25).
        source_kind: the data layout when ``source`` is a path (``auto`` detects it).

    Example:
        >>> ds = XRayDataset("sample:kermany", size=64)                     # doctest: +SKIP
        >>> ds[0]["image"].shape, ds.classes                                # doctest: +SKIP
        (torch.Size([1, 64, 64]), ('NORMAL', 'PNEUMONIA'))
    """

    def __init__(self, source: Cache | Manifest | str | Path, indices: Sequence[int] | np.ndarray | None = None,
                 size: int = 224, cache_dir: str | Path = "~/.cache/deeppneumonia", resize: str = "squash",
                 transform: Transform | None = None, normalize: bool = False, mean: float = 0.5, std: float = 0.25,
                 source_kind: str = "auto") -> None:
        if isinstance(source, str | Path):
            from deeppneumonia.data.sources import load_source, resolve_data_path

            source = load_source(resolve_data_path(str(source)), source_kind)
        if isinstance(source, Manifest):
            source = build_cache(source, size, cache_dir, resize, progress=False)
        self.cache: Cache = source
        valid = self.cache.valid
        idx = self.cache.valid_indices() if indices is None else np.asarray(indices, dtype=np.int64)
        self.indices = idx[valid[idx]] if len(idx) else idx
        self.transform = transform
        self.normalize, self.mean, self.std = normalize, mean, std

    @property
    def manifest(self) -> Manifest:
        """The manifest whose records the items are."""
        return self.cache.manifest

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in the order of ``target``."""
        return tuple(self.cache.manifest.classes)

    @property
    def size(self) -> int:
        """The side of the (square) images, in pixels."""
        return self.cache.size

    def __len__(self) -> int:
        """Number of items (the selected records whose image decoded)."""
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i``: image (1, S, S) float in [0, 1], target, lesion mask, boxes (x, y, w, h), ids.

        The transform, if any, is applied to image, mask and boxes together; normalisation comes after it.
        """
        rec_i = int(self.indices[i])
        rec = self.cache.manifest.records[rec_i]
        s = self.cache.size
        image = torch.from_numpy(np.array(self.cache.images[rec_i], dtype=np.float32) / 255.0)[None]
        boxes = pad_boxes([self.cache.boxes(rec_i)])[0]
        boxes = boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)]
        mask = boxes_to_mask_tensor(boxes[None], torch.tensor([[float(s), float(s)]]), (s, s))[0]
        if self.transform is not None:
            image, mask, boxes = self.transform(*_wrap(image, mask, boxes, s))
            image, mask, boxes = (torch.as_tensor(t).as_subclass(Tensor) for t in (image, mask, boxes))
        if self.normalize:
            image = (image - self.mean) / self.std
        return {"image": image, "target": torch.tensor(rec.target, dtype=torch.float32), "mask": mask,
                "boxes": boxes.float(), "index": rec_i, "image_id": rec.image_id, "patient_id": rec.patient_id}

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``collate_fn`` for a DataLoader: stacks image, target, mask; pads boxes to (B, K, 4) with NaN.

        Returns:
            ``image`` (B, 1, S, S), ``target`` (B, C), ``mask`` (B, 1, S, S), ``boxes`` (B, K, 4) (NaN rows are
            padding), ``n_boxes`` (B,), ``index`` (B,) and lists ``image_id``, ``patient_id``.
        """
        k = max([len(it["boxes"]) for it in items] + [1])
        boxes = torch.full((len(items), k, 4), float("nan"))
        for j, it in enumerate(items):
            boxes[j, :len(it["boxes"])] = it["boxes"]
        return {"image": torch.stack([it["image"] for it in items]), "target": torch.stack([it["target"] for it in items]),
                "mask": torch.stack([it["mask"] for it in items]), "boxes": boxes,
                "n_boxes": torch.tensor([len(it["boxes"]) for it in items]),
                "index": torch.tensor([it["index"] for it in items]),
                "image_id": [it["image_id"] for it in items], "patient_id": [it["patient_id"] for it in items]}


def _wrap(image: Tensor, mask: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The three as torchvision ``tv_tensors`` when torchvision has them (so v2 transforms treat each right)."""
    try:
        from torchvision import tv_tensors
    except ImportError:  # torchvision < 0.16: plain tensors
        return image, mask, boxes
    return (tv_tensors.Image(image), tv_tensors.Mask(mask),
            tv_tensors.BoundingBoxes(boxes, format="XYWH", canvas_size=(size, size)))


__all__ = ["Transform", "XRayDataset"]

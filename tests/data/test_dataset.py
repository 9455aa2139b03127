"""XRayDataset: a torch Dataset over a manifest or the cache; a plain PyTorch loop trains through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deeppneumonia.data import XRayDataset
from deeppneumonia.data.sources import load_source
from deeppneumonia.data.splits import patient_split


def _dataset(lesion_csv: Path, tmp_path: Path, **kw: object) -> XRayDataset:
    return XRayDataset(load_source(lesion_csv), size=32, cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def test_items_hold_image_target_mask_boxes(lesion_csv: Path, tmp_path: Path) -> None:
    ds = _dataset(lesion_csv, tmp_path)
    assert len(ds) == 48 and ds.classes == ("clear", "lesion")
    item = ds[1]  # a 'lesion' image with one box
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0 and float(item["image"].max()) <= 1
    assert item["target"].tolist() == [0.0, 1.0]
    assert item["boxes"].shape == (1, 4) and item["mask"].shape == (1, 32, 32)
    x, y, w, h = item["boxes"][0].tolist()
    inside = item["mask"][0, int(y + h / 2), int(x + w / 2)]
    assert float(inside) == pytest.approx(1.0) and 0 < float(item["mask"].mean()) < 1
    clear = ds[0]
    assert clear["boxes"].shape == (0, 4) and float(clear["mask"].sum()) == 0


def test_path_and_indices_and_collate(lesion_csv: Path, tmp_path: Path) -> None:
    split = patient_split(load_source(lesion_csv), 0.25, 0.0, 0)
    ds = XRayDataset(str(lesion_csv), indices=split.train, size=32, cache_dir=tmp_path / "cache")
    assert len(ds) == len(split.train)
    batch = next(iter(DataLoader(ds, batch_size=6, collate_fn=XRayDataset.collate)))
    assert batch["image"].shape == (6, 1, 32, 32) and batch["target"].shape == (6, 2)
    assert batch["boxes"].shape[0] == 6 and batch["boxes"].shape[2] == 4
    assert batch["n_boxes"].tolist() == [int((~torch.isnan(b[:, 0])).sum()) for b in batch["boxes"]]


def _train(ds: XRayDataset, steps_per_epoch_check: int = 6) -> list[float]:
    """The 20-line plain PyTorch loop of docs/api.md: DataLoader, a small CNN, cross-entropy, SGD."""
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=XRayDataset.collate)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                          nn.Linear(16, len(ds.classes)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    epoch_losses = []
    for _epoch in range(6):
        losses = []
        for batch in loader:
            loss = nn.functional.cross_entropy(model(batch["image"]), batch["target"].argmax(1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
    return epoch_losses


def test_plain_pytorch_loop_trains(lesion_csv: Path, tmp_path: Path) -> None:
    losses = _train(_dataset(lesion_csv, tmp_path, normalize=True))
    assert losses[-1] < 0.5 * losses[0], losses


def test_torchvision_v2_transform_moves_image_mask_and_boxes_together(lesion_csv: Path, tmp_path: Path) -> None:
    v2 = pytest.importorskip("torchvision.transforms.v2")
    flip = _dataset(lesion_csv, tmp_path, transform=v2.RandomHorizontalFlip(p=1.0))
    plain = _dataset(lesion_csv, tmp_path)
    a, b = plain[1], flip[1]
    assert torch.equal(b["image"], a["image"].flip(-1)) and torch.equal(b["mask"], a["mask"].flip(-1))
    x, y, w, h = a["boxes"][0].tolist()
    assert b["boxes"][0].tolist() == pytest.approx([32 - x - w, y, w, h], abs=1e-4)
    assert type(b["image"]) is torch.Tensor  # plain tensors out, whatever the transform returns

    aug = v2.Compose([v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                      v2.ColorJitter(brightness=0.2, contrast=0.2)])
    losses = _train(_dataset(lesion_csv, tmp_path, transform=aug, normalize=True))
    assert losses[-1] < 0.7 * losses[0], losses

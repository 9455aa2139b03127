"""Is the data path ever the bottleneck? Training-step and data-only rates, measured in one run.

Rows:
  model only      the same step on in-memory random tensors (no data path at all): the ceiling
  ours            cache (memory-mapped uint8) -> batch -> device -> masks + augmentation -> step
  reference       torchvision ImageFolder + PIL transforms + DataLoader(workers) -> step
and the same two pipelines with the model step removed (data only), so their capacity is visible.

Usage: python benchmarks/data_path.py [--data ../shared/data/kermany-pneumonia/train] [--size 128]
       [--batch 32] [--steps 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torchvision
from _table import machine_line, rate_table  # benchmarks/_table.py (the script's own folder is on sys.path)
from torch import Tensor

from deeppneumonia.config import AugmentConfig
from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.sources import load_source
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.transforms.inputs import make_inputs


def timed(batches: Iterator[Tensor], step: Callable[[Tensor], None], n: int, warmup: int = 2) -> float:
    """Images per second over ``n`` batches after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    t0, seen = time.perf_counter(), 0
    for _ in range(n):
        x = next(it)
        step(x)
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kermany-pneumonia/train")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rt = resolve_runtime("auto", "auto", True)
    model = build_classifier(2).to(rt.device).to(memory_format=rt.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step(x: Tensor) -> None:
        x = x.to(rt.device).contiguous(memory_format=rt.memory_format)
        with rt.autocast():
            loss = loss_fn(model(x).float(), torch.zeros(len(x), dtype=torch.long, device=rt.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def no_step(x: Tensor) -> None:
        pass

    aug = AugmentConfig()
    manifest = load_source(args.data)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cache = build_cache(manifest, args.size, cache_dir, progress=False)
        cache_s = time.perf_counter() - t0
        split = CachedSplit(cache, np.arange(len(manifest)))
        g = torch.Generator().manual_seed(0)

        def ours() -> Iterator[Tensor]:
            for epoch in range(1000):
                for b in split.iterate(args.batch, shuffle=True, seed=epoch, drop_last=True):
                    yield make_inputs(b, rt, 0.5, 0.25, aug, g, with_mask=True)[0]

        T = torchvision.transforms
        tf = T.Compose([T.Grayscale(), T.RandomResizedCrop(args.size, scale=(0.7, 1.0)), T.RandomRotation(10),
                        T.ColorJitter(0.2, 0.2), T.ToTensor(), T.Normalize([0.5], [0.25])])
        ds = torchvision.datasets.ImageFolder(args.data, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                             drop_last=True, persistent_workers=args.workers > 0)

        def reference() -> Iterator[Tensor]:
            while True:
                for x, _ in loader:
                    yield x

        def synthetic() -> Iterator[Tensor]:
            x = torch.randn(args.batch, 1, args.size, args.size)
            while True:
                yield x

        rows = [("model only (in-memory tensors)", timed(synthetic(), train_step, args.steps)),
                ("ours: cache + batched augmentation", timed(ours(), train_step, args.steps)),
                ("reference: ImageFolder + PIL + DataLoader", timed(reference(), train_step, args.steps)),
                ("ours, data only", timed(ours(), no_step, args.steps * 4)),
                ("reference, data only", timed(reference(), no_step, args.steps * 4))]
    ours_rate, ref_rate = rows[1][1], rows[2][1]
    print("\n" + machine_line(rt.dtype, f"{args.size} px, batch {args.batch}, {args.steps} timed steps after 2 warm-up; "
          f"data: {args.data} ({len(manifest)} images; cache built in {cache_s:.1f} s); reference workers {args.workers}\n"))
    print(rate_table("pipeline", rows))
    print(f"\nours / reference, training step: {ours_rate / ref_rate:.2f}x; data only: {rows[3][1] / rows[4][1]:.2f}x")


if __name__ == "__main__":
    main()

"""Stage I epoch: ours vs the same SimCLR built from the lightly library's transforms and loss.

Both use the same ResNet18 encoder (1 grey channel), the same 2-layer projector and temperature 0.2.
  ours     cache (uint8 memmap) -> two batched views augmented on the device -> InfoNCELoss
  lightly  image files -> PIL -> lightly SimCLRTransform (grey, no hue) in DataLoader workers -> NTXentLoss
A third row times the step on in-memory tensors (the model-only ceiling). Needs `pip install lightly`.

Usage: python benchmarks/simclr_vs_lightly.py [--data ../shared/data/kermany-pneumonia/train] [--size 128]
       [--images 384] [--batch 64] [--workers 2]
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

from deeppneumonia.config import PretrainConfig
from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.sources import load_source
from deeppneumonia.losses import InfoNCELoss
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.models.projector import Projector
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.transforms.inputs import make_inputs


def main() -> None:
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kermany-pneumonia/train")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=384, help="images per timed epoch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rt = resolve_runtime("auto", "auto", True)
    torch.manual_seed(0)
    enc = build_classifier(1).to(rt.device).to(memory_format=rt.memory_format)
    proj = Projector(512, 512, 128).to(rt.device)
    opt = torch.optim.SGD([*enc.parameters(), *proj.parameters()], lr=0.1, momentum=0.9)
    ours_loss, lightly_loss = InfoNCELoss(0.2), NTXentLoss(temperature=0.2)

    def step(x1: Tensor, x2: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        x = torch.cat([x1, x2]).to(rt.device).contiguous(memory_format=rt.memory_format)
        with rt.autocast():
            z = proj(enc.forward_head(enc.forward_features(x), pre_logits=True))
        z1, z2 = z.float().chunk(2)
        loss = loss_fn(z1, z2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(pairs: Iterator[tuple[Tensor, Tensor]], loss_fn: Callable[[Tensor, Tensor], Tensor]) -> float:
        step(*next(pairs), loss_fn)  # warm-up
        t0, seen = time.perf_counter(), 0
        while seen < args.images:
            x1, x2 = next(pairs)
            step(x1, x2, loss_fn)
            seen += len(x1)
        return seen / (time.perf_counter() - t0)

    manifest = load_source(args.data)
    aug = PretrainConfig().augment
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = build_cache(manifest, args.size, cache_dir, progress=False)
        split = CachedSplit(cache, np.arange(len(manifest)))
        g = torch.Generator().manual_seed(0)

        def ours() -> Iterator[tuple[Tensor, Tensor]]:
            for epoch in range(1000):
                for b in split.iterate(args.batch, shuffle=True, seed=epoch, drop_last=True):
                    yield (make_inputs(b, rt, 0.5, 0.25, aug, g)[0], make_inputs(b, rt, 0.5, 0.25, aug, g)[0])

        tf = SimCLRTransform(input_size=args.size, cj_hue=0.0, cj_sat=0.0, random_gray_scale=0.0, hf_prob=0.0,
                             rr_prob=1.0, rr_degrees=15, min_scale=0.35, normalize={"mean": [0.5], "std": [0.25]})

        def grey_views(img):  # type: ignore[no-untyped-def]
            v1, v2 = tf(img.convert("RGB"))
            return v1[:1], v2[:1]  # grey image: the three channels are equal

        ds = torchvision.datasets.ImageFolder(args.data, transform=grey_views)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                             drop_last=True, persistent_workers=args.workers > 0)

        def lightly_pairs() -> Iterator[tuple[Tensor, Tensor]]:
            while True:
                for (v1, v2), _ in loader:
                    yield v1, v2

        def synthetic() -> Iterator[tuple[Tensor, Tensor]]:
            x = torch.randn(args.batch, 1, args.size, args.size)
            while True:
                yield x, x

        rows = [("model only (in-memory tensors)", timed(synthetic(), ours_loss)),
                ("ours: cache + batched views + InfoNCELoss", timed(ours(), ours_loss)),
                ("lightly: SimCLRTransform + DataLoader + NTXentLoss", timed(lightly_pairs(), lightly_loss))]
    print("\n" + machine_line(rt.dtype, f"{args.size} px, batch {args.batch} (x2 views), {args.images} images timed "
          f"after 1 warm-up step, lightly workers {args.workers}; data {args.data}\n"))
    print(rate_table("Stage I pipeline", rows))
    print(f"\nours / lightly: {rows[1][1] / rows[2][1]:.2f}x")


if __name__ == "__main__":
    main()

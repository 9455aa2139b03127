"""Batches from the preprocessing cache: uint8 images, padded boxes and targets, read ahead in a thread.

Images are gathered from the memory-mapped cache with one fancy-index per batch (the OS page cache keeps
a data set that fits in memory resident; one that does not is read as needed). Conversion to float,
masks, augmentation and normalisation happen on the training device (``transforms/inputs.py``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deeppneumonia.data.cache import Cache
from deeppneumonia.data.masks import pad_boxes


@dataclass
class Batch:
    images: Tensor  # (B, 1, S, S) uint8
    boxes: Tensor  # (B, K, 4) x, y, w, h in cache pixels; zero-size padding
    has_box: Tensor  # (B,) bool
    target: Tensor  # (B, C) float, NaN = unknown
    index: Tensor  # (B,) record indices into the manifest


def resize_batch(batch: Batch, size: int) -> Batch:
    """The batch with its images resized to ``size`` x ``size`` (antialiased bilinear, rounded back to uint8) and its
    boxes scaled to match; the batch itself when it already has that size (progressive resizing)."""
    side = batch.images.shape[-1]
    if size == side:
        return batch
    x = F.interpolate(batch.images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8)
    if batch.images.is_pinned():  # a GPU run's host batch: keep its copy to the device asynchronous
        images = images.pin_memory()
    return replace(batch, images=images, boxes=batch.boxes * (size / side))


class BatchSource:
    """Anything that gives a batch for positions ``0 .. len-1``; ``iterate`` makes seeded epochs of it."""

    def __len__(self) -> int:
        """Number of positions (images) the source holds."""
        raise NotImplementedError

    def batch(self, pos: np.ndarray) -> Batch:
        """The batch of the records at positions ``pos`` (subclasses implement it)."""
        raise NotImplementedError

    def iterate(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                prefetch: int = 2, shard: bool = False) -> Iterator[Batch]:
        """Batches in a seeded order; the next ``prefetch`` batches are read by a background thread.

        With ``shard`` under torchrun, ``batch_size`` is the global batch: every rank computes the same order
        and takes its contiguous 1/W slice of each batch (rank 0 the first), so W processes together see
        exactly the batches one process would. Needs ``drop_last`` and a batch size divisible by W.
        """
        from deeppneumonia.runtime import distributed

        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        chunks = [order[i:i + batch_size] for i in range(0, stop, batch_size)]
        world = distributed.world_size() if shard else 1
        if world > 1:
            if not drop_last or batch_size % world:
                raise ValueError(f"a sharded epoch needs drop_last and a global batch size divisible by the "
                                 f"{world} processes; got batch_size={batch_size}, drop_last={drop_last}")
            per, r = batch_size // world, distributed.rank()
            chunks = [c[r * per:(r + 1) * per] for c in chunks]
        if prefetch <= 0:
            yield from (self.batch(c) for c in chunks)
            return
        q: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=prefetch)
        stop_event = threading.Event()

        def work() -> None:
            """Producer thread: put each batch (or the exception raised) on the queue, then None."""
            try:
                for c in chunks:
                    if stop_event.is_set():
                        return
                    q.put(self.batch(c))
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)
                return
            q.put(None)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()
            while t.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)



class CachedSplit(BatchSource):
    """The records ``indices`` of a cache (invalid, undecodable images are dropped here)."""

    def __init__(self, cache: Cache, indices: np.ndarray) -> None:
        keep = cache.valid[indices]
        self.cache = cache
        self.indices = np.asarray(indices)[keep]
        self.targets = torch.from_numpy(cache.manifest.targets()[self.indices])
        self.boxes = pad_boxes([cache.boxes(int(i)) for i in self.indices])
        self.has_box = torch.tensor([bool(cache.manifest.records[int(i)].boxes) for i in self.indices])
        self.resident: Tensor | None = None  # the split's images on the training device (see ``keep_on``)
        self._resident_meta: tuple[Tensor, Tensor, Tensor] | None = None  # boxes, has_box, targets there too
        self.pin = False  # gather batches into pinned host memory (they go to a GPU: ``place_data`` sets it)

    def nbytes(self) -> int:
        """Bytes the split's uint8 images take (what ``keep_on`` copies to the device)."""
        return len(self) * int(self.cache.images.shape[1]) * int(self.cache.images.shape[2])

    def keep_on(self, device: torch.device, chunk_bytes: int = 256 * 2**20) -> None:
        """Copy the split's uint8 images to ``device`` once; batches are then gathered there (the GPU fast path).

        The copy goes in chunks of ``chunk_bytes`` (pinned, asynchronous on CUDA) straight into the device
        tensor, so no process holds the whole split in host memory (under torchrun every rank copies it).
        """
        shape = tuple(int(v) for v in self.cache.images.shape[1:])
        out = torch.empty((len(self), 1, *shape), dtype=torch.uint8, device=device)
        rows = max(1, chunk_bytes // max(1, int(np.prod(shape))))
        cuda = torch.device(device).type == "cuda"
        for start in range(0, len(self), rows):
            idx = self.indices[start:start + rows]
            chunk = torch.from_numpy(np.ascontiguousarray(self.cache.images[idx]))
            out[start:start + len(idx), 0].copy_(chunk.pin_memory() if cuda else chunk, non_blocking=cuda)
        self.resident = out
        self._resident_meta = (self.boxes.to(device), self.has_box.to(device), self.targets.to(device))

    def __len__(self) -> int:
        """Number of (decodable) records in the split."""
        return len(self.indices)

    def class_counts(self) -> list[int]:
        """Positives per class in the split (unknown targets are not counted)."""
        return [int(v) for v in torch.nansum(self.targets == 1, dim=0).tolist()]

    def batch(self, pos: np.ndarray) -> Batch:
        """The batch at split positions ``pos``, reordered by increasing record index (memmap offset).

        Gathered on the device when ``keep_on`` made the split resident, else read from the memmap (into pinned
        memory when ``pin`` is set).
        """
        order = np.argsort(self.indices[pos])  # read the memmap in increasing offset order
        pos = pos[order]
        p = torch.from_numpy(pos)
        if self.resident is not None and self._resident_meta is not None:  # gathered on the device
            dev = self.resident.device
            pd = p.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else p.to(dev)
            boxes, has_box, targets = (t[pd] for t in self._resident_meta)
            return Batch(self.resident[pd], boxes, has_box, targets, torch.from_numpy(self.indices[pos]))
        rows = self.indices[pos]
        if self.pin:  # read the memmap straight into page-locked memory: the copy to the GPU is then asynchronous
            images = torch.empty((len(rows), 1, *self.cache.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
            np.take(self.cache.images, rows, axis=0, out=images.numpy()[:, 0], mode="clip")
            return Batch(images, self.boxes[p].pin_memory(), self.has_box[p].pin_memory(),
                         self.targets[p].pin_memory(), torch.from_numpy(rows))
        images = torch.from_numpy(np.ascontiguousarray(self.cache.images[rows]))[:, None]
        return Batch(images, self.boxes[p], self.has_box[p], self.targets[p], torch.from_numpy(rows))


class UnlabelledUnion(BatchSource):
    """Several splits (of different data sets and caches of one size) as one pool of images for Stage I.

    Only images matter: batches carry empty boxes and targets and index -1. Each batch is drawn from the
    pooled, seeded order and gathered per member (so sharding and prefetching work as for ``CachedSplit``).
    """

    def __init__(self, parts: list[CachedSplit]) -> None:
        """Pool ``parts``; raises ValueError unless all their caches have one image size."""
        sizes = {p.cache.images.shape[1:] for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"all parts need one image size; got {sorted(sizes)}")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        """Total number of images over the parts."""
        return int(self.offsets[-1])

    def batch(self, pos: np.ndarray) -> Batch:
        """Images at pooled positions ``pos`` (sorted), gathered from each member and concatenated.

        The batch lives on the device of the first part when it is resident there; boxes and targets are empty, index -1.
        """
        pos = np.sort(pos)
        member = np.searchsorted(self.offsets, pos, side="right") - 1
        images = [self.parts[m].batch(pos[member == m] - self.offsets[m]).images for m in np.unique(member)]
        device = images[0].device if self.parts[0].resident is None else self.parts[0].resident.device
        x = torch.cat([im.to(device, non_blocking=True) for im in images])  # the training split may be on the GPU
        b = x.shape[0]
        return Batch(x, torch.zeros(b, 0, 4), torch.zeros(b, dtype=torch.bool), torch.zeros(b, 0),
                     torch.full((b,), -1, dtype=torch.long))

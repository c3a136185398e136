"""Batches for the trainer: the whole data set as one uint8 tensor on the device, augmented
in whole batches (airbench's manner), and a DataLoader path for on-disk data.

Every batch is a dict: ``index`` (dataset indices, the key of per-sample state), ``label``
(the given label), ``clean`` (the true label, for diagnostics only; absent when unknown) and
one float tensor per requested view:

- ``plain``: normalised only (evaluation passes);
- ``train``: the run's shared augmentation (``--augment``: none, flip, crop, crop-flip), the
  view every method trains its plain steps on (CE, Co-teaching, ELR, IDO's stage 1,
  DivideMix's warm-up), so that every method gets the same plain-view augmentation;
- ``weak`` and ``weak2``: two independent draws of random crop (padding 4) + flip, and
  ``strong``: crop + flip + RandAugment n=2, m=10 drawn per sample (:mod:`bench.augment`):
  the views methods define for themselves (IDO's stage 2, DivideMix's two augmentations),
  whatever ``--augment`` says.

No per-sample Python work runs in the loop. The loaders know nothing about methods: a method
names the views it needs, and the loader makes them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

Batch = dict[str, torch.Tensor]
AUGMENTS = ("none", "flip", "crop", "crop-flip")
VIEWS = ("plain", "train", "weak", "weak2", "strong")


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch (B, C, H, W), by one gather, no loop."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bidx = torch.arange(b, device=x.device)[:, None, None, None]
    cidx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bidx, cidx, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image of the batch horizontally with probability 1/2."""
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


@dataclass
class ViewMaker:
    """Turns uint8 image batches into normalised float views."""

    mean: torch.Tensor  # (1, C, 1, 1) on [0, 255] pixels
    std: torch.Tensor
    augment: str = "crop-flip"
    pad: int = 4  # the usual CIFAR padding; 4 px of 28 or 32
    channels_last: bool = False
    dtype: torch.dtype = torch.float32

    def __call__(self, images: torch.Tensor, view: str, gen: torch.Generator) -> torch.Tensor:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
        x = images
        augment = self.augment if view == "train" else "none" if view == "plain" else "crop-flip"
        if "crop" in augment:
            x = random_crop(x, self.pad, gen)
        if "flip" in augment:
            x = random_flip(x, gen)
        if view == "strong":
            from bench.augment import rand_augment

            x = rand_augment(x, gen)
        x = (x.to(self.dtype) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def make_view_maker(mean: Sequence[float], std: Sequence[float], device: torch.device, augment: str,
                    channels_last: bool) -> ViewMaker:
    to = dict(device=device, dtype=torch.float32)
    m = torch.tensor([v * 255 for v in mean], **to).view(1, -1, 1, 1)
    s = torch.tensor([v * 255 for v in std], **to).view(1, -1, 1, 1)
    return ViewMaker(m, s, augment=augment, channels_last=channels_last)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """A generator for one epoch's order and augmentation, a pure function of (seed, epoch),
    so a resumed run draws exactly what the uninterrupted run drew."""
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    gen.manual_seed(seed * 1_000_003 + epoch)
    return gen


class InMemoryLoader:
    """The training (or test) set as tensors on the device; batches are index slices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, clean: np.ndarray | None,
                 views: ViewMaker, batch_size: int, device: torch.device) -> None:
        self.device = device
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        self.clean = None if clean is None else torch.from_numpy(clean.astype(np.int64)).to(device)
        self.views = views
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, views: Sequence[str], gen: torch.Generator) -> Batch:
        """The batch of the samples with dataset indices ``index``, with the given views."""
        imgs = self.images[index]
        out: Batch = {"index": index, "label": self.labels[index]}
        if self.clean is not None:
            out["clean"] = self.clean[index]
        for view in views:
            out[view] = self.views(imgs, view, gen)
        return out

    def iterate(self, views: Sequence[str], gen: torch.Generator | None = None, shuffle: bool = True,
                indices: torch.Tensor | None = None, batch_size: int | None = None) -> Iterator[Batch]:
        """Batches over ``indices`` (default: every sample), shuffled by ``gen``."""
        idx = torch.arange(len(self), device=self.device) if indices is None else indices.to(self.device)
        gen = gen if gen is not None else epoch_generator(0, 0, self.device)
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=gen, device=gen.device).to(self.device)]
        bs = batch_size or self.batch_size
        for start in range(0, len(idx), bs):
            yield self.batch(idx[start:start + bs], views, gen)


class DiskImageDataset(TorchDataset):
    """Images read from files by a DataLoader's workers (for data too large for memory).

    ``transforms`` maps view names to callables from a PIL image to a tensor; decoding and
    augmentation run in the workers, off the training loop.
    """

    def __init__(self, files: Sequence[str], labels: np.ndarray, clean: np.ndarray | None,
                 transforms: dict[str, Callable], views: Sequence[str]) -> None:
        self.files, self.labels, self.clean = list(files), labels.astype(np.int64), clean
        self.transforms, self.views = transforms, tuple(views)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            item = {view: self.transforms[view](im) for view in self.views}
        item["index"] = i
        item["label"] = int(self.labels[i])
        if self.clean is not None:
            item["clean"] = int(self.clean[i])
        return item


def disk_loader(dataset: DiskImageDataset, batch_size: int, shuffle: bool, workers: int, seed: int,
                epoch: int, device: torch.device) -> DataLoader:
    """A DataLoader over ``dataset`` with workers and pinned memory; order fixed by (seed, epoch)."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=device.type == "cuda", generator=gen,
                      persistent_workers=False, drop_last=False)


def to_device(batch: dict, device: torch.device) -> Batch:
    """Move a DataLoader batch to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

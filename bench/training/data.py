"""Batches for the trainer: the whole data set as one uint8 tensor on the device, augmented
in whole batches (airbench's manner); on-disk data has the same interface in
:mod:`bench.training.disk`.

Every batch is a dict: ``index`` (dataset indices, the key of per-sample state), ``label``
(the given label) and one float tensor per requested view. The true labels stay with the loader
(``loader.clean``, for the trainer's diagnostics): batches, which methods see, never carry them.
The views are registered (:mod:`bench.common.views`): the trainer's ``plain`` (normalised only)
and ``train`` (the run's ``--augment``, the view every method trains its plain steps on), the
shared ``weak``/``weak2``/``strong`` methods ask for, and each method's published views, registered
by the method's own module. A :class:`ViewMaker` makes any of them from the recipe: the op before
the base augmentation, the base crop and flip, the op after it, normalisation, the op on the
normalised batch.

No per-sample Python work runs in the loop. The loaders know nothing about methods: a method
names the views it needs, and the loader makes them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.common.views import get_view

Batch = dict[str, torch.Tensor]


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
    size: int | None = None  # output side length; None: the data's own
    policy: str = "shared"  # of the methods' own views: on top of ``augment``, or crop + flip

    def __call__(self, images: torch.Tensor, view: str, gen: torch.Generator) -> torch.Tensor:
        """The ``view`` of a uint8 batch (B, C, H, W) held in memory: the view's op before its
        base augmentation, the base crop and flip, then :meth:`device_stage`, :meth:`normalise`
        and :meth:`finish`."""
        spec = get_view(view)
        x = images if spec.before is None else spec.before(images, gen)
        augment = spec.base_augment(self.augment, self.policy)
        if "crop" in augment:
            x = random_crop(x, self.pad, gen)
        if "flip" in augment:
            x = random_flip(x, gen)
        return self.finish(view, self.normalise(self.device_stage(view, x, gen)), gen)

    def device_stage(self, view: str, x: torch.Tensor, gen: torch.Generator, workers_did: bool = False
                     ) -> torch.Tensor:
        """The view's op after its base augmentation, on uint8 images on the device (both paths,
        in memory and on disk); ``workers_did``: the loader's workers applied its PIL form."""
        spec = get_view(view)
        if spec.after is None or (workers_did and spec.after_pil is not None):
            return x
        return spec.after(x, gen)

    def finish(self, view: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The view's op on the normalised batch (Cutout of the mean colour), if it has one."""
        spec = get_view(view)
        return x if spec.normalised is None else spec.normalised(x, gen)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float, resized to ``size`` when set (e.g. 32-px
        CIFAR batches to a 224-px pretrained backbone: resized on the device, per batch, so
        the data set stays small in memory)."""
        x = (x.to(self.dtype) - self.mean) / self.std
        if self.size is not None and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def make_view_maker(mean: Sequence[float], std: Sequence[float], device: torch.device, augment: str,
                    channels_last: bool, size: int | None = None, policy: str = "shared") -> ViewMaker:
    to = dict(device=device, dtype=torch.float32)
    m = torch.tensor([v * 255 for v in mean], **to).view(1, -1, 1, 1)
    s = torch.tensor([v * 255 for v in std], **to).view(1, -1, 1, 1)
    return ViewMaker(m, s, augment=augment, channels_last=channels_last, size=size, policy=policy)


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

    def prefetch(self, plan: Iterator[tuple[torch.Tensor, int]], views: tuple[str, ...],
                 start: bool = False) -> Iterator[Batch]:
        """A side stream's batches (:class:`methods.streams.BatchStream`), made when asked (in
        memory there is nothing to read ahead, ``start`` changes nothing), each augmented from
        its own seed."""
        for idx, seed in plan:
            gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
            yield self.batch(idx.to(self.device), views, gen.manual_seed(seed % 2**63))


@dataclass
class Prefetcher:
    """What the trainer gives a method as ``ctx.prefetch``: where a stream draws its index
    batches (``device``) and the loader's ``prefetch(plan, views)``."""

    device: torch.device
    make: Callable[..., Iterator[Batch]]
    # True while the trainer runs an epoch's phases: a stream made then may start at once (one
    # made outside, e.g. by a look at a method's phases before training, waits for its first use)
    live: bool = False

    def __call__(self, plan: Iterator[tuple[torch.Tensor, int]], views: tuple[str, ...]) -> Iterator[Batch]:
        return self.make(plan, views, start=self.live)

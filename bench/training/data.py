"""Batches for the trainer: the whole data set as one uint8 tensor on the device, augmented
in whole batches (airbench's manner); on-disk data has the same interface in
:mod:`bench.training.disk`.

Every batch is a dict: ``index`` (dataset indices, the key of per-sample state), ``label``
(the given label) and one float tensor per requested view. The true labels stay with the loader
(``loader.clean``, for the trainer's diagnostics): batches, which methods see, never carry them.
The views:

- ``plain``: normalised only (evaluation passes);
- ``train``: the run's shared augmentation (``--augment``: none, flip, crop, crop-flip), the
  view every method trains its plain steps on (CE, Co-teaching, ELR, IDO's stage 1,
  DivideMix's warm-up), so that every method gets the same plain-view augmentation;
- ``weak`` and ``weak2`` (two independent draws) and ``strong`` (``weak`` + RandAugment n=2,
  m=10 drawn per sample, :mod:`bench.training.augment`): the views methods ask for themselves
  (IDO's stage 2, DivideMix's two augmentations). Under the run's view policy ``--views
  shared`` (the default) ``weak`` is the run's ``--augment`` itself, so every method trains on
  the same augmentation and a comparison measures methods, not augmentations; under
  ``official`` it is the methods' published augmentation, random crop (padding 4) + flip,
  whatever ``--augment`` says. With ``--augment crop-flip`` the two policies coincide, draw for
  draw.
- ``ra-cutout`` and ``ra-cutout2`` (two independent draws): RandAugment n=1, m=3 first, then the
  view's base augmentation, then Cutout of a square half the image side (16 px of 32) in the
  normalised image: GJS's CIFAR views (``datasets/transforms.py``: RandAugment(1, 3) inserted
  before crop + flip, ``CutoutDefault(16)`` after normalisation). The op set is torchvision's,
  batched (:mod:`bench.training.augment`); the official code uses the ``RandAugment`` package,
  whose op list differs a little.
- ``strong-mc``: ``weak`` + FixMatch-style RandAugment (n=2, a level drawn per op in 1-4 of 10,
  each op applied with p=1/2) + a grey ``CutoutAbs`` of 15% of the side, all on uint8 before
  normalisation: DISC's strong view (``TransformFixMatch_CIFAR10`` with ``RandAugmentwogeo(2, 5)``,
  datasets/randaugment.py). Approximations, named: torchvision's op set and ranges
  (:func:`bench.training.augment.rand_augment_mc`), and the crop pads with zeros, not reflection.
- ``autoaug`` and ``autoaug2`` (two independent draws): ``weak`` + AutoAugment with the CIFAR-10
  policy, sub-policy, probabilities and signs drawn per sample, on uint8 before normalisation:
  UNICON's strong views (dataloader_cifar.py: crop + flip + ``CIFAR10Policy()``), with
  torchvision's ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` semantics
  (:func:`bench.training.augment.auto_augment`).
- ``autoaug-cutout``: ``autoaug`` then Cutout of a square half the image side (16 px of 32) in
  the normalised image: SOP+'s strong view (data_loaders.py: crop + flip + ``CIFAR10Policy()`` +
  ``Cutout(16)``).
- ``ra-promix``: ``weak`` + ProMix's ``RandomAugment(3, 5)``: 3 ops per image at values drawn
  over their whole range, always applied, then a grey Cutout of side uniform(0, 0.5) x width
  (:func:`bench.training.augment.promix_augment`; dataloader_cifarn.py, utils/randaug.py).
  Approximations, named: torchvision's op set and ranges in 10 steps, and the official order
  (RandomAugment before crop + flip) reversed.

No per-sample Python work runs in the loop. The loaders know nothing about methods: a method
names the views it needs, and the loader makes them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Batch = dict[str, torch.Tensor]
VIEWS = ("plain", "train", "weak", "weak2", "strong", "ra-cutout", "ra-cutout2", "strong-mc", "autoaug", "autoaug2",
         "autoaug-cutout", "ra-promix")
CUTOUT_VIEWS = ("ra-cutout", "ra-cutout2")
AA_VIEWS = ("autoaug", "autoaug2", "autoaug-cutout")
LIGHT_RA = (1, 3)  # GJS: RandAugment(N=1, M=3) (configs, datasets/transforms.py)
MC_CUTOUT = 0.15  # DISC: RandAugmentwogeo(n=2, m=5) ends with CutoutAbs(img, int(size * 0.15))


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


def cutout(x: torch.Tensor, gen: torch.Generator, length: int | None = None) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square (default half the side) around a centre drawn per
    sample anywhere in the image, clipped at the borders (``CutoutDefault``); applied to
    normalised images, so the square takes the mean colour."""
    b, _, h, w = x.shape
    half = (length if length is not None else h // 2) // 2
    cy = torch.randint(0, h, (b,), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=gen.device).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_y = (rows >= (cy[:, None] - half)) & (rows < (cy[:, None] + half))
    in_x = (cols >= (cx[:, None] - half)) & (cols < (cx[:, None] + half))
    keep = ~(in_y[:, :, None] & in_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


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

    def base(self, view: str) -> str:
        """The augmentation a view starts from (``strong`` adds RandAugment to it)."""
        return base_augment(view, self.augment, self.policy)

    def __call__(self, images: torch.Tensor, view: str, gen: torch.Generator) -> torch.Tensor:
        """The ``view`` of a uint8 batch (B, C, H, W) held in memory: augmentation, then
        :meth:`normalise`."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
        x = images
        if view in CUTOUT_VIEWS:
            from bench.training.augment import rand_augment

            x = rand_augment(x, gen, *LIGHT_RA)
        augment = self.base(view)
        if "crop" in augment:
            x = random_crop(x, self.pad, gen)
        if "flip" in augment:
            x = random_flip(x, gen)
        if view == "strong":
            from bench.training.augment import rand_augment

            x = rand_augment(x, gen)
        return self.finish(view, self.normalise(self.device_stage(view, x, gen)), gen)

    def device_stage(self, view: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """What a view does to uint8 images on the device after its base augmentation (both
        paths, in memory and on disk): FixMatch-style RandAugment and grey Cutout for ``strong-mc``,
        AutoAugment (CIFAR-10 policy) for the ``autoaug`` views, ProMix's for ``ra-promix``."""
        if view in AA_VIEWS:
            from bench.training.augment import auto_augment

            return auto_augment(x, gen)
        if view == "ra-promix":
            from bench.training.augment import promix_augment

            return promix_augment(x, gen)
        if view != "strong-mc":
            return x
        from bench.training.augment import cutout_abs, rand_augment_mc

        return cutout_abs(rand_augment_mc(x, gen), gen, int(x.shape[-1] * MC_CUTOUT))

    def finish(self, view: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """What a view does after normalisation: Cutout for the ``ra-cutout`` views and
        ``autoaug-cutout``."""
        return cutout(x, gen) if view in CUTOUT_VIEWS or view == "autoaug-cutout" else x

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


def base_augment(view: str, augment: str, policy: str) -> str:
    """The augmentation ``view`` starts from: none for ``plain``, the run's ``augment`` for
    ``train`` and, under the ``shared`` policy, for the methods' own views too; crop + flip for
    those under ``official``."""
    if view == "plain":
        return "none"
    if view == "train" or policy == "shared":
        return augment
    return "crop-flip"


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

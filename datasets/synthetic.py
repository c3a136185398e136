"""A synthetic data set for measuring speed: class-structured images made in memory from a seed.

It has CIFAR's shapes by default (50,000 + 10,000 colour images of 32 x 32, 10 classes) and
takes others through ``--set`` (``train_size``, ``test_size``, ``classes``, ``image_size``,
``channels``, ``seed``), e.g. ImageNet's 224 px; nothing is read from disk and no
``--data-root`` is needed. It exists to time runs (CPU or GPU) without data files: its accuracy
says nothing about any method or real data set.

How an image is made: each class has a template, a random coarse 4 x 4 grid of values per
channel, mirror-symmetric left to right (so a horizontal flip, part of the default crop + flip
augmentation, keeps an image in its class, as with natural images). Each image takes its
class's grid, jitters every grid value (Gaussian), scales it in contrast and shifts it in
brightness (per channel), upsamples it bilinearly to the image size with a random sub-pixel
shift of up to an eighth of the side (wrapping around: the grid is periodic), and adds uniform
pixel noise. The jitter makes the classes overlap somewhat; a small CNN still learns them in a
few epochs. Labels are balanced (``i % classes``, shuffled). The templates, the labels and each
chunk of images come from streams of their own, spawned from the seed (training and test
apart), and only elementwise float operations (no BLAS) make the pixels, so the same options
give the same bytes, whatever the number of threads. ``mean``/``std`` are measured on the
generated training images (``read``; placeholders before).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from bench.common.cores import usable_cores
from datasets.base import DATASETS, Dataset, RawSplits

GRID = 4              # side of the coarse grid a class template is upsampled from
JITTER = 0.4          # std of the per-image Gaussian jitter of each grid value (grid values lie in [0, 1])
CONTRAST = (0.7, 1.3)  # per-image contrast factor around 0.5
BRIGHTNESS = 0.1      # per-image, per-channel brightness shift, uniform in [-0.1, 0.1]
SHIFT = 1 / 8         # largest shift, as a fraction of the side, in each direction
NOISE = 0.1           # std of the uniform pixel noise, on [0, 1] pixels
CHUNK_VALUES = 1 << 22  # float32 values per generation chunk (16 MiB): images per chunk = this / (C * H * W)
MAX_SIDE = 512
MAX_BYTES = 32 << 30  # train + test as uint8: the largest set generated (it is held in memory)


@dataclass
class SyntheticOptions:
    train_size: int = field(default=50_000, metadata={"help": "training images"})
    test_size: int = field(default=10_000, metadata={"help": "test images"})
    classes: int = field(default=10, metadata={"help": "number of classes (at least 2)"})
    image_size: int = field(default=32, metadata={"help": f"side of the square images, in [8, {MAX_SIDE}]"})
    channels: Literal[1, 3] = field(default=3, metadata={"help": "1 (grey) or 3 (colour)"})
    seed: int = field(default=0, metadata={"help": "seed of the images and labels; the same seed gives the same bytes"})

    def __post_init__(self) -> None:
        # ValueError: build_options turns it into one `--set: ...` usage line
        for name in ("train_size", "test_size", "classes", "image_size", "channels", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name}={value!r}: expected an integer")
        if self.classes < 2:
            raise ValueError(f"classes={self.classes}: must be at least 2")
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value < self.classes:
                raise ValueError(f"{name}={value}: must be at least classes={self.classes} (one image per class)")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: valid values are 1, 3")
        if not 8 <= self.image_size <= MAX_SIDE:
            raise ValueError(f"image_size={self.image_size}: must lie in [8, {MAX_SIDE}]")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed={self.seed}: must lie in [0, 2**32)")
        size = (self.train_size + self.test_size) * self.channels * self.image_size**2
        if size > MAX_BYTES:
            raise ValueError(f"train_size + test_size = {self.train_size + self.test_size:,} images of "
                             f"{self.channels} x {self.image_size} x {self.image_size} are {size / 2**30:.1f} GiB; "
                             f"at most {MAX_BYTES >> 30} GiB are generated (they are held in memory)")


def _bilinear_weights(side: int, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Periodic bilinear upsampling from ``GRID`` cells to ``side`` pixels, shifted by ``offset``
    pixels per image: the two grid rows (n, side) each pixel row mixes, and the weight of the second."""
    u = (np.arange(side, dtype=np.float32)[None, :] + np.float32(0.5) - offset[:, None]) * np.float32(GRID / side)
    u -= np.float32(0.5)
    lower = np.floor(u)
    weight = u - lower
    i0 = lower.astype(np.int64) % GRID
    return i0, (i0 + 1) % GRID, weight


def _chunk(templates: np.ndarray, labels: np.ndarray, out: np.ndarray,
           seed: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``out`` (uint8, (m, C, side, side)) with images of ``labels``; return the
    per-channel sum and sum of squares of its pixels (0..255)."""
    rng = np.random.default_rng(seed)
    m, c, side = len(labels), templates.shape[1], out.shape[-1]
    grid = templates[labels] + np.float32(JITTER) * rng.standard_normal((m, c, GRID, GRID), dtype=np.float32)
    contrast = rng.uniform(*CONTRAST, (m, 1, 1, 1)).astype(np.float32)
    bright = rng.uniform(-BRIGHTNESS, BRIGHTNESS, (m, c, 1, 1)).astype(np.float32)
    # uniform noise of std NOISE: levels 0..255 (std sqrt((256**2 - 1) / 12)) times `step`
    step = np.float32(NOISE * 255 / np.sqrt((256**2 - 1) / 12))
    # on 0..255, less the noise's mean (127.5 levels), plus 0.5 so that floor() rounds
    grid = ((grid - np.float32(0.5)) * contrast + np.float32(0.5) + bright) * np.float32(255)
    grid += np.float32(0.5) - step * np.float32(127.5)
    shift = np.float32(SHIFT * side)
    dy, dx = (rng.uniform(-shift, shift, m).astype(np.float32) for _ in range(2))
    # pixel noise levels: raw 64-bit draws as bytes (twice as fast as integers(0, 256))
    count = out.size
    levels = rng.bit_generator.random_raw(-(-count // 8)).astype("<u8", copy=False).view(np.uint8)
    levels = levels[:count].reshape(out.shape)
    # along x first, on the small (m, C, GRID, side) array: rows = lo + wx * (hi - lo), lo and
    # hi the two grid columns each pixel column lies between (np.take on flat indices)
    x0, x1, wx = _bilinear_weights(side, dx)
    flat = grid.ravel()
    at = np.arange(m * c * GRID, dtype=np.int64).reshape(m, c, GRID, 1) * GRID
    rows = np.take(flat, at + x0[:, None, None, :])
    hi = np.take(flat, at + x1[:, None, None, :])
    hi -= rows
    hi *= wx[:, None, None, :]
    rows += hi
    # then along y, to the full size: x = rows[y0] + wy * (rows[y0 + 1] - rows[y0]), periodic
    step_y = np.roll(rows, -1, axis=2) - rows
    y0, _, wy = _bilinear_weights(side, dy)
    at = np.arange(m * c, dtype=np.int64).reshape(m, c, 1) * GRID + y0[:, None, :]  # (m, C, side)
    x = np.take(rows.reshape(m * c * GRID, side), at, axis=0)  # (m, C, side, side)
    d = np.take(step_y.reshape(m * c * GRID, side), at, axis=0)
    d *= wy[:, None, :, None]
    x += d
    np.multiply(levels, step, out=d)
    x += d
    np.clip(x, 0, 255, out=x)
    np.floor(x, out=x)  # the uint8 value, exactly
    out[...] = x
    flat = x.reshape(m, c, -1)
    return np.einsum("ncp->c", flat).astype(np.float64), np.einsum("ncp,ncp->c", flat, flat).astype(np.float64)


def _split(templates: np.ndarray, n: int, side: int, seed: np.random.SeedSequence,
           workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images (uint8, (n, C, side, side)) and balanced labels, and the per-channel sum and
    sum of squares of the pixels (0..255). Chunks of images come from streams of their own
    (spawned from ``seed``), so threads may make them in any order: the bytes stay the same."""
    c = templates.shape[1]
    label_seed, chunk_seed = seed.spawn(2)
    labels = np.random.default_rng(label_seed).permutation(np.arange(n, dtype=np.int64) % len(templates))
    out = np.empty((n, c, side, side), np.uint8)
    size = max(1, CHUNK_VALUES // (c * side * side))
    starts = range(0, n, size)
    seeds = chunk_seed.spawn(len(starts))
    jobs = [(templates, labels[s:s + size], out[s:s + size], q) for s, q in zip(starts, seeds, strict=True)]
    if workers > 1 and len(jobs) > 1:  # numpy releases the GIL in all the heavy steps
        with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
            sums = list(pool.map(lambda job: _chunk(*job), jobs))
    else:
        sums = [_chunk(*job) for job in jobs]
    return out, labels, sum(s for s, _ in sums), sum(q for _, q in sums)


def generate(opts: SyntheticOptions) -> tuple[RawSplits, tuple[float, ...], tuple[float, ...]]:
    """The splits of ``opts`` and the training images' per-channel mean and std on [0, 1]."""
    streams = np.random.SeedSequence([opts.seed, 0x5E7]).spawn(3)  # templates, train, test
    # mirror-symmetric templates (grid columns a b b a): a horizontal flip keeps the class
    half = np.random.default_rng(streams[0]).random((opts.classes, opts.channels, GRID, GRID // 2),
                                                     dtype=np.float32)
    templates = np.concatenate([half, half[..., ::-1]], axis=3)
    workers = usable_cores()
    train, train_labels, total, squares = _split(templates, opts.train_size, opts.image_size, streams[1], workers)
    test, test_labels, _, _ = _split(templates, opts.test_size, opts.image_size, streams[2], workers)
    count = opts.train_size * opts.image_size**2
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return (RawSplits(train, train_labels, test, test_labels),
            tuple(float(v) / 255 for v in mean), tuple(max(float(v) / 255, 1e-3) for v in std))


@DATASETS.register("synthetic")
class Synthetic(Dataset):
    """Synthetic class-structured images from a seed, for timing only (accuracy means nothing)."""

    # Shapes, class count and pixel statistics follow the options, so they are set on each
    # instance; the class attributes are those of the default options (for listings).
    Options = SyntheticOptions
    name = "synthetic"
    classes: ClassVar[tuple[str, ...]] = tuple(f"class{i}" for i in range(10))
    channels = 3
    image_size = 32
    mean = (0.5, 0.5, 0.5)  # placeholders until read() measures the generated training images
    std = (0.25, 0.25, 0.25)
    asym_map = None
    real_noise = False
    on_disk = False
    # a timing data set: only what a measurement needs (the usual crop + flip on the device)
    defaults = {"augment": "crop-flip"}
    expected: ClassVar[dict[str, int]] = {}

    def __init__(self, options: SyntheticOptions | None = None) -> None:
        super().__init__(options)
        o = self.opts
        self.classes = tuple(f"class{i}" for i in range(o.classes))
        self.channels = o.channels
        self.image_size = o.image_size
        self.mean = (0.5,) * o.channels
        self.std = (0.25,) * o.channels

    def read(self, root: str | None) -> RawSplits:
        """Generate the splits (``root`` is ignored) and set ``mean``/``std`` from the training images."""
        raw, self.mean, self.std = generate(self.opts)
        return raw

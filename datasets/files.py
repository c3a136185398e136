"""The base of data sets streamed from image files (Clothing1M, WebVision, Tiny-ImageNet,
Animal-10N, Food-101N, any ImageFolder tree).

A subclass parses its list files into a :class:`FileIndex` (paths and labels; no image is
opened), and the base turns that into :class:`datasets.base.RawSplits` of file paths. The
trainer streams them through DataLoader workers (:class:`bench.training.data.DiskLoader`); an image
that fails to decode is skipped and counted there, not a crash. A missing list file or
folder fails at once with the path that was expected.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.common.errors import UsageError
from datasets.base import Dataset, RawSplits

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pretrained backbones' normalisation (timm / torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class SampledEpochs:
    """Options of data sets whose epoch may be a fresh class-balanced sample; subclasses
    redeclare ``samples_per_epoch`` with their own default's help and source."""

    samples_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError("samples_per_epoch must be at least 1")


@dataclass
class FileIndex:
    """What a data set's lists say: paths (absolute) and labels per split."""

    train_files: list[str]
    train_labels: np.ndarray
    test_files: list[str]
    test_labels: np.ndarray
    train_clean: np.ndarray | None = None
    extra_tests: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # further facts for `data check`


def need(path: Path, what: str = "") -> Path:
    """``path`` if it exists, else a one-line error naming it."""
    if not path.exists():
        raise UsageError(f"expected {what + ' ' if what else ''}{path} is missing")
    return path


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a list file."""
    need(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def parse_pairs(path: Path) -> Iterator[tuple[str, int]]:
    """``<relative path> <int label>`` lines."""
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split()
        try:
            yield parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise UsageError(f"{path}, line {n}: expected '<path> <label>', found {line[:80]!r}") from None


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (with ``recursive``: in its subfolders too), sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FileDataset(Dataset):
    """A data set of image files with list files; subclasses implement :meth:`index`."""

    on_disk = True
    channels = 3
    image_size = 224  # the crop the protocol trains on (ImageNet-style 256 -> 224)
    resize: ClassVar[int | None] = 256
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    # IDO's protocol (ResNet-50, AdamW lr 1e-3 wd 1e-5, 15 epochs at 224 px): what a bare
    # `bench run --dataset NAME` uses; a data set whose papers fine-tune ImageNet weights adds
    # "pretrained" (Clothing1M, WebVision, Food-101N); presets set the rest.
    defaults = {"backbone": "timm:resnet50", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-5,
                "batch_size": 128, "epochs": 15, "augment": "crop-flip"}

    def index(self, root: Path) -> FileIndex:  # pragma: no cover - abstract
        raise NotImplementedError

    def root(self, root: str | None) -> Path:
        if not root:
            raise UsageError(f"data set {self.name} needs --data-root DIR (the folder of its files; "
                             "nothing is downloaded)")
        path = Path(root)
        if not path.is_dir():
            raise UsageError(f"--data-root {root}: no such folder")
        return path

    def check_root(self, root: str | None) -> None:
        self.index(self.root(root))

    def read(self, root: str | None) -> RawSplits:
        idx = self.index(self.root(root))
        as_array = lambda files: np.array([str(f) for f in files], dtype=object)  # noqa: E731
        return RawSplits(
            train_images=as_array(idx.train_files), train_labels=np.asarray(idx.train_labels, np.int64),
            test_images=as_array(idx.test_files), test_labels=np.asarray(idx.test_labels, np.int64),
            train_clean=None if idx.train_clean is None else np.asarray(idx.train_clean, np.int64),
            extra_tests={k: (as_array(f), np.asarray(y, np.int64)) for k, (f, y) in idx.extra_tests.items()},
        )

    def notes(self, root: str | None) -> list[str]:
        """Facts ``data check`` prints besides the counts (e.g. Clothing1M's clean subsets)."""
        return self.index(self.root(root)).notes

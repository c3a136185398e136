"""Tiny-ImageNet (Stanford CS231n): 200 ImageNet classes at 64x64, 500 training and 50
validation images per class. Synthetic noise applies; the validation set is the test set (the
official test images carry no labels), as in the IDO paper's Tiny-ImageNet columns.

Layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` with
``val/val_annotations.txt`` (``<file> <wnid> <box>``). Class indices follow the sorted wnids
(torchvision ImageFolder's order over train/).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, image_files, need, read_lines


@DATASETS.register("tiny-imagenet")
class TinyImageNet(FileDataset):
    """Tiny-ImageNet: 100k/10k 64x64 colour images, 200 classes; synthetic noise applies."""

    name = "tiny-imagenet"
    image_size = 64
    resize = None  # native 64 px; presets resize to 224 for pretrained backbones
    expected = {"train": 100_000, "test": 10_000}
    _classes: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._classes or tuple(f"class{i}" for i in range(200))

    def index(self, root: Path) -> FileIndex:
        wnids = sorted(set(read_lines(root / "wnids.txt")))
        self._classes = tuple(wnids)
        label = {w: i for i, w in enumerate(wnids)}
        train_files, train_labels = [], []
        for w in wnids:
            folder = need(root / "train" / w / "images", f"Tiny-ImageNet training folder of {w}")
            files = image_files(folder)
            train_files += [str(f) for f in files]
            train_labels += [label[w]] * len(files)
        test_files, test_labels = [], []
        ann = root / "val" / "val_annotations.txt"
        for n, line in enumerate(read_lines(ann), 1):
            parts = line.split()
            if len(parts) < 2 or parts[1] not in label:
                raise UsageError(f"{ann}, line {n}: expected '<file> <wnid of wnids.txt> ...', "
                                 f"found {line[:80]!r}")
            test_files.append(str(root / "val" / "images" / parts[0]))
            test_labels.append(label[parts[1]])
        return FileIndex(train_files, np.array(train_labels), test_files, np.array(test_labels))

"""Food-101N (Lee et al., CVPR 2018, CleanNet): 310k web images of Food-101's 101 classes,
about 20% wrong labels; tested on Food-101's clean test split.

Layout under ``--data-root``: ``Food-101N_release/meta/imagelist.tsv`` (a header line, then
``<class>/<hash>.jpg``), ``Food-101N_release/meta/classes.txt`` (a header line, then the class
names), ``meta/verified_train.tsv`` and ``meta/verified_val.tsv`` (``<class>/<hash>.jpg <0|1>``
human verification flags, reported by ``data check``), images in ``Food-101N_release/images/``;
and Food-101 as ``food-101/meta/test.txt`` (``<class>/<id>``) with ``food-101/images/``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, need, read_lines

RELEASE, FOOD101 = "Food-101N_release", "food-101"


@DATASETS.register("food101n")
class Food101N(FileDataset):
    """Food-101N: 310k web images, 101 classes, tested on Food-101's 25,250 test images."""

    name = "food101n"
    real_noise = True
    expected = {"train": 310_009, "test": 25_250}
    # ImageNet-pretrained ResNet-50 (IDO author response, Food-101N column: every method
    # fine-tunes a pretrained ResNet-50; "from scratch" rows are marked as such)
    defaults = {**FileDataset.defaults, "pretrained": True}
    _classes: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._classes or tuple(f"class{i}" for i in range(101))

    def index(self, root: Path) -> FileIndex:
        rel = need(root / RELEASE, "Food-101N folder")
        names = read_lines(rel / "meta" / "classes.txt")[1:]  # first line is a header
        self._classes = tuple(names)
        label = {c: i for i, c in enumerate(names)}
        train = read_lines(rel / "meta" / "imagelist.tsv")[1:]
        train_labels = [self._label(label, key, rel / "meta" / "imagelist.tsv") for key in train]
        food = need(root / FOOD101, "Food-101 folder (its test split is Food-101N's test set)")
        test = read_lines(food / "meta" / "test.txt")
        test_labels = [self._label(label, key, food / "meta" / "test.txt") for key in test]
        notes = []
        for name in ("verified_train.tsv", "verified_val.tsv"):
            path = rel / "meta" / name
            if path.is_file():
                try:
                    flags = np.array([int(line.split()[-1]) for line in read_lines(path)[1:]])
                except ValueError:
                    notes.append(f"{name}: lines are not '<class>/<key> <0|1>'; verification flags not read")
                    continue
                notes.append(f"{name}: {len(flags)} verified samples, {np.mean(flags == 0):.2%} of them "
                             "marked wrong (an estimate of the noise rate)")
        return FileIndex(
            train_files=[str(rel / "images" / k) for k in train], train_labels=np.array(train_labels),
            test_files=[str(food / "images" / f"{k}.jpg") for k in test], test_labels=np.array(test_labels),
            notes=notes)

    @staticmethod
    def _label(label: dict[str, int], key: str, path: Path) -> int:
        cls = key.split("/", 1)[0]
        if cls not in label:
            raise UsageError(f"{path}: class {cls!r} of {key!r} is not in classes.txt")
        return label[cls]

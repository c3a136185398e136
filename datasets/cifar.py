"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), python version: 50k + 10k 32x32 colour images.

Layouts (the tarballs' own): ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``
(pickled dicts, ``data`` N x 3072 uint8 channel-major, ``labels``), ``batches.meta``;
``cifar-100-python/train`` and ``test`` (``fine_labels``, ``coarse_labels``) and ``meta``.
``--data-root`` may name the folder itself or the folder holding it. Held in memory on the
device (150 MB as uint8); synthetic noise applies to the clean labels.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS, Dataset, RawSplits


def unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch file; pickles hold only dicts of arrays, lists and strings."""
    if not path.is_file():
        raise UsageError(f"expected CIFAR file {path} is missing")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # noqa: S301 (the data set's own format)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a CIFAR pickle ({type(exc).__name__})") from None


def images_of(batch: dict[str, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise UsageError(f"{path}: 'data' should be N x 3072 uint8, found shape {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def find_folder(root: str | None, folder: str, marker: str) -> Path:
    if not root:
        raise UsageError(f"--data-root is required: the folder holding {folder}/ (no download here)")
    for cand in (Path(root), Path(root) / folder):
        if (cand / marker).is_file():
            return cand
    raise UsageError(f"{folder}/{marker} not found under --data-root {root}; expected {Path(root) / folder / marker}")


@DATASETS.register("cifar10")
class CIFAR10(Dataset):
    """CIFAR-10, 50k/10k 32x32 colour, 10 classes (python version), in memory."""

    name = "cifar10"
    folder: ClassVar[str] = "cifar-10-batches-py"
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    channels = 3
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)  # training-set statistics, the common CIFAR-10 values
    std = (0.2470, 0.2435, 0.2616)
    # CIFAR-10 asym (Patrini et al. 2017, used by DivideMix and ELR): truck->automobile,
    # bird->airplane, deer->horse, cat<->dog
    asym_map = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    # DivideMix's CIFAR protocol (Train_cifar.py): PreAct ResNet-18, SGD 0.02, momentum 0.9,
    # wd 5e-4, batch 64; presets give the IDO protocol (pretrained, 224 px)
    defaults = {"backbone": "preact_resnet18", "optimizer": "sgd", "lr": 0.02, "momentum": 0.9,
                "weight_decay": 5e-4, "batch_size": 64, "epochs": 300, "augment": "crop-flip"}
    expected = {"train": 50_000, "test": 10_000}
    label_key: ClassVar[str] = "labels"

    def _train_files(self, folder: Path) -> list[Path]:
        return [folder / f"data_batch_{i}" for i in range(1, 6)]

    def _test_file(self, folder: Path) -> Path:
        return folder / "test_batch"

    def check_root(self, root: str | None) -> None:
        folder = find_folder(root, self.folder, self._test_file(Path(".")).name)
        for f in self._train_files(folder):
            if not f.is_file():
                raise UsageError(f"expected CIFAR file {f} is missing")

    def read(self, root: str | None) -> RawSplits:
        folder = find_folder(root, self.folder, self._test_file(Path(".")).name)
        imgs, labels = [], []
        for f in self._train_files(folder):
            b = unpickle(f)
            imgs.append(images_of(b, f))
            labels.append(self._labels(b, f))
        test = unpickle(self._test_file(folder))
        return RawSplits(np.concatenate(imgs), np.concatenate(labels), images_of(test, self._test_file(folder)),
                         self._labels(test, self._test_file(folder)))

    def _labels(self, batch: dict[str, Any], path: Path) -> np.ndarray:
        if self.label_key not in batch:
            raise UsageError(f"{path}: no '{self.label_key}' key (found {', '.join(map(str, batch))})")
        return np.asarray(batch[self.label_key], dtype=np.int64)


@DATASETS.register("cifar100")
class CIFAR100(CIFAR10):
    """CIFAR-100, 50k/10k 32x32 colour, 100 fine classes (python version), in memory."""

    name = "cifar100"
    folder = "cifar-100-python"
    classes = tuple(f"class{i}" for i in range(100))  # names are in meta; indices are what count
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    # asym: each class flips to the next class of its superclass, cyclically, with the
    # superclasses taken from the data's own coarse labels (not the index
    # blocks of 5 that Patrini's and ELR's code use). Filled in by read().
    asym_map: dict[int, int] | None = {}
    defaults = {**CIFAR10.defaults, "lr": 0.02}
    label_key = "fine_labels"

    def _train_files(self, folder: Path) -> list[Path]:
        return [folder / "train"]

    def _test_file(self, folder: Path) -> Path:
        return folder / "test"

    def read(self, root: str | None) -> RawSplits:
        raw = super().read(root)
        folder = find_folder(root, self.folder, "test")
        batch = unpickle(folder / "train")
        if "coarse_labels" in batch:
            self.asym_map = superclass_map(raw.train_labels, np.asarray(batch["coarse_labels"], dtype=np.int64))
        return raw


def superclass_map(fine: np.ndarray, coarse: np.ndarray) -> dict[int, int]:
    """fine class -> the next fine class (ascending, cyclic) of the same coarse class."""
    out: dict[int, int] = {}
    for c in np.unique(coarse):
        members = np.unique(fine[coarse == c]).tolist()
        for i, f in enumerate(members):
            out[f] = members[(i + 1) % len(members)]
    return out

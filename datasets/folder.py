"""Any ImageFolder-style tree, so users can bring their own data.

Layout: ``train/<class>/<images>`` and ``test/<class>/<images>`` (or ``val/``); classes are the
sorted folder names of ``train/``, and each class folder is searched with its subfolders, as
torchvision's ``ImageFolder`` does. A test class that ``train/`` lacks is an error (its images
could never be predicted right), and so is a tree with a single class folder: that is almost
always the images one level deeper (``train/images/<class>/``) than the layout expects.

By default the folder names are the labels and synthetic
noise can be applied to them. With ``--set labels=FILE`` (lines ``<path relative to train/>
<label index>``) the file gives the training labels instead: real noise, and the folder names
become the clean labels, so the realised noise rate and detection AUCs are logged. The crop
size is the run's ``--image-size`` (default 224, from a 256 resize).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, image_files, need, parse_pairs


@DATASETS.register("folder")
class Folder(FileDataset):
    """Your own images: train/<class>/ and test/<class>/, optional file of given labels."""

    @dataclass
    class Options:
        labels: str | None = field(default=None, metadata={
            "help": "file of '<path relative to train/> <label>' lines: the given (noisy) labels"})

    name = "folder"
    _classes: tuple[str, ...] = ()

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        if not self._classes:
            raise UsageError("folder: classes are unknown before the data is read")
        return self._classes

    @property
    def real_noise(self) -> bool:  # type: ignore[override]
        return self.opts.labels is not None

    def index(self, root: Path) -> FileIndex:
        train = need(root / "train", "folder of training classes")
        test = root / "test" if (root / "test").is_dir() else root / "val"
        need(test, "folder of test classes (test/ or val/)")
        names = sorted(p.name for p in train.iterdir() if p.is_dir())
        if len(names) < 2:
            found = f"only the folder {names[0]!r}" if names else "no class folders"
            raise UsageError(f"{train} holds {found}; expected train/<class>/<images> with one folder per "
                             "class (at least 2): are the class folders one level deeper?")
        unknown = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name not in names)
        if unknown:
            raise UsageError(f"{test} has class folders that {train} lacks: {', '.join(unknown)}; "
                             f"the classes are those of train/: {', '.join(names)}")
        self._classes = tuple(names)
        train_files, train_labels = self._walk(train, names)
        test_files, test_labels = self._walk(test, names)
        clean = None
        if self.opts.labels is not None:
            given = dict(parse_pairs(need(Path(self.opts.labels), "labels file")))
            rel = [str(Path(f).relative_to(train)) for f in train_files]
            gone = [r for r in rel if r not in given]
            if gone:
                raise UsageError(f"{self.opts.labels}: {len(gone)} training images have no label, e.g. {gone[0]}")
            clean, train_labels = train_labels, np.array([given[r] for r in rel], dtype=np.int64)
        return FileIndex(train_files, train_labels, test_files, test_labels, train_clean=clean)

    @staticmethod
    def _walk(folder: Path, names: list[str]) -> tuple[list[str], np.ndarray]:
        files, labels = [], []
        for i, name in enumerate(names):
            sub = folder / name
            for f in image_files(sub, recursive=True) if sub.is_dir() else []:
                files.append(str(f))
                labels.append(i)
        return files, np.array(labels, dtype=np.int64)

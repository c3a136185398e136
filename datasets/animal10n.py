"""Animal-10N (Song et al., ICML 2019, SELFIE): 55k 64x64 web images of 10 animals in 5
confusing pairs, labelled by crowd workers with about 8% real noise. No clean labels.

Layout: ``training/`` and ``testing/`` folders of ``<label>_<id>.jpg`` files; the label is the
file-name prefix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, image_files, need


def labelled_files(folder: Path) -> tuple[list[str], np.ndarray]:
    files, labels = [], []
    for f in image_files(need(folder, "Animal-10N folder")):
        prefix = f.name.split("_", 1)[0]
        if not prefix.isdigit():
            raise UsageError(f"{f}: Animal-10N file names are '<label>_<id>.jpg'")
        files.append(str(f))
        labels.append(int(prefix))
    return files, np.array(labels, dtype=np.int64)


@DATASETS.register("animal10n")
class Animal10N(FileDataset):
    """Animal-10N: 50k/5k 64x64 web images, 10 classes, about 8% real noise."""

    name = "animal10n"
    classes = ("cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan",
               "hamster", "guinea pig")  # the release's label order
    real_noise = True
    image_size = 64
    resize = None
    expected = {"train": 50_000, "test": 5_000}
    # not pretrained: Animal-10N's published protocol trains from scratch on the 64-px images
    # (PLC, github.com/pxiangwu/PLC animal10/train.py: vgg19_bn(pretrained=False))

    def index(self, root: Path) -> FileIndex:
        train_files, train_labels = labelled_files(root / "training")
        test_files, test_labels = labelled_files(root / "testing")
        return FileIndex(train_files, train_labels, test_files, test_labels)

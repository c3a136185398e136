"""Clothing1M (Xiao et al., CVPR 2015): 1M clothing images from shopping sites with labels
from the surrounding text (about 38% wrong), 14 classes, plus smaller human-verified sets.

Layout: ``noisy_label_kv.txt`` and ``clean_label_kv.txt`` (lines ``images/a/b/x.jpg <0..13>``),
``noisy_train_key_list.txt``, ``clean_train_key_list.txt``, ``clean_val_key_list.txt``,
``clean_test_key_list.txt`` and ``category_names_eng.txt`` in ``--data-root`` or its
``annotations/`` folder; the images under ``--data-root``/``images/``. Training uses the noisy
training keys with their noisy labels; the test set is the clean test keys. An epoch is a fresh
class-balanced sample of ``samples_per_epoch`` noisy images (default 1000 batches of the run's
batch size: DivideMix's Train_clothing1M.py num_batches=1000; IDO's stage 2 draws 1000 x 64).
The noisy training set has no clean labels (only a small overlap with the clean sets, which
``data check`` reports), so no clean mask is logged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS
from datasets.files import FileDataset, FileIndex, SampledEpochs, need, parse_pairs, read_lines

LISTS = ("noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt", "clean_test_key_list.txt")


@DATASETS.register("clothing1m")
class Clothing1M(FileDataset):
    """Clothing1M: 1M web-labelled clothing images, 14 classes; clean test set of ~10.5k."""

    @dataclass
    class Options(SampledEpochs):
        samples_per_epoch: int | None = field(default=None, metadata={
            "help": "noisy images drawn (class-balanced) for each epoch; default 1000 x batch size",
            "source": "DivideMix Train_clothing1M.py num_batches=1000; IDO stage 2: 1000 x 64"})

    name = "clothing1m"
    classes = ("T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
               "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear")  # category_names_eng.txt
    real_noise = True
    # the data set's documentation (Xiao et al. 2015): 1M noisy training images; the clean
    # val/test key lists hold about 14k and 10.5k keys, and sources disagree which is which,
    # so `data check` prints both counts instead of expecting one
    expected = {"train": 1_000_000}
    # ImageNet-pretrained ResNet-50, as every Clothing1M protocol: DivideMix Train_clothing1M.py
    # create_model() (torchvision resnet50(pretrained=True)); IDO paper Sec. 4 and its configs
    defaults = {**FileDataset.defaults, "pretrained": True}

    def epoch_samples(self, batch_size: int) -> int | None:
        return self.opts.samples_per_epoch or 1000 * batch_size

    @staticmethod
    def lists_dir(root: Path) -> Path:
        cands = (root, root / "annotations")
        for cand in cands:
            if all((cand / f).is_file() for f in LISTS):
                return cand
        best = max(cands, key=lambda c: sum((c / f).is_file() for f in LISTS))  # where the lists are
        missing = next(f for f in LISTS if not (best / f).is_file())
        raise UsageError(f"Clothing1M list file {best / missing} is missing (the lists go in --data-root "
                         "or its annotations/ folder)")

    def index(self, root: Path) -> FileIndex:
        lists = self.lists_dir(root)
        need(root / "images", "Clothing1M image folder")
        noisy = dict(parse_pairs(lists / "noisy_label_kv.txt"))
        clean = dict(parse_pairs(lists / "clean_label_kv.txt"))
        train_keys = read_lines(lists / "noisy_train_key_list.txt")
        test_keys = read_lines(lists / "clean_test_key_list.txt")
        for keys, table, what in ((train_keys, noisy, "noisy_label_kv.txt"), (test_keys, clean, "clean_label_kv.txt")):
            gone = [k for k in keys if k not in table]
            if gone:
                raise UsageError(f"{len(gone)} keys have no label in {lists / what}, e.g. {gone[0]}")
        notes = []
        notes.append(f"clean_test_key_list.txt (the test set): {len(test_keys)} keys")
        for name in ("clean_train_key_list.txt", "clean_val_key_list.txt"):
            if (lists / name).is_file():
                notes.append(f"{name}: {len(read_lines(lists / name))} keys")
        both = [k for k in train_keys if k in clean]
        if both:
            wrong = np.mean([noisy[k] != clean[k] for k in both])
            notes.append(f"noisy training keys that also have a clean label: {len(both)}; "
                         f"their noisy labels disagree in {wrong:.2%}")
        return FileIndex(
            train_files=[str(root / k) for k in train_keys], train_labels=np.array([noisy[k] for k in train_keys]),
            test_files=[str(root / k) for k in test_keys], test_labels=np.array([clean[k] for k in test_keys]),
            notes=notes)

"""CIFAR-10N and CIFAR-100N (Wei et al., ICLR 2022): CIFAR's training images with labels from
human annotators, aligned with the python version's training order.

Files: the CIFAR python folder (see :mod:`datasets.cifar`) and ``CIFAR-10_human.pt`` /
``CIFAR-100_human.pt`` (a torch-saved dict of int arrays of length 50,000), found in
``--data-root`` or its ``data/`` folder (where the CIFAR-N repository keeps them). The label
set is a data-set option: ``--set label=worse`` (default; the set the papers report, 40.21%
noise) or aggre, random1, random2, random3 for CIFAR-10N; ``noisy`` (default, 40.20%) or
``noisy_coarse`` (the 20 superclasses, 26.40%) for CIFAR-100N. Clean labels come from the same
file, so the realised noise rate and noise-detection AUCs are logged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from bench.common.errors import UsageError
from datasets.base import DATASETS, RawSplits
from datasets.cifar import CIFAR10, CIFAR100, find_folder, unpickle


def load_human_labels(path: Path) -> dict[str, np.ndarray]:
    """The CIFAR-N label file, loaded with torch's weights-only unpickler and only numpy's array
    types allowed, so the file cannot run code (PyTorch >= 2.6 refuses it otherwise)."""
    import torch

    try:
        from numpy._core.multiarray import _reconstruct  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    # the released files were pickled under numpy 1, which names the function numpy.core...
    allowed = [np.ndarray, np.dtype, _reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"),
               type(np.dtype(np.int64)), type(np.dtype(np.int32))]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise UsageError(f"{path} is not a CIFAR-N label file ({type(exc).__name__}: {str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a CIFAR-N label file (expected a dict of label arrays)")
    return {k: np.asarray(v, dtype=np.int64) for k, v in data.items()}


class HumanLabels:
    """Mixin: the training labels come from the CIFAR-N file, ``key_of(option) -> file key``."""

    human_file: ClassVar[str]
    label_keys: ClassVar[dict[str, str]]
    clean_keys: ClassVar[dict[str, str]]

    def _human_path(self, root: str | None) -> Path:
        base = Path(root or ".")
        for cand in (base / self.human_file, base / "data" / self.human_file):
            if cand.is_file():
                return cand
        raise UsageError(f"{self.human_file} not found: expected {base / self.human_file} "
                         f"(or {base / 'data' / self.human_file}); get it from the CIFAR-N release")

    def check_root(self, root: str | None) -> None:
        super().check_root(root)  # type: ignore[misc]
        self._human_path(root)

    def read(self, root: str | None) -> RawSplits:
        raw = super().read(root)  # type: ignore[misc]
        path = self._human_path(root)
        human = load_human_labels(path)
        key, clean_key = self.label_keys[self.opts.label], self.clean_keys[self.opts.label]
        for k in (key, clean_key):
            if k not in human:
                raise UsageError(f"{path}: no '{k}' labels (found {', '.join(sorted(human))})")
            if len(human[k]) != len(raw.train_labels):
                raise UsageError(f"{path}: '{k}' has {len(human[k])} labels for {len(raw.train_labels)} "
                                 "training images (the file must match the python version's order)")
        fine_clean = human.get("clean_label")
        if fine_clean is not None and not np.array_equal(fine_clean, raw.train_labels):
            bad = int(np.flatnonzero(fine_clean != raw.train_labels)[0])
            raise UsageError(f"{path}: its clean labels disagree with the CIFAR training labels (first at "
                             f"sample {bad}): the CIFAR copy is not in the python version's order")
        raw.train_clean = human[clean_key]
        raw.train_labels = human[key]
        return raw


@DATASETS.register("cifar10n")
class CIFAR10N(HumanLabels, CIFAR10):
    """CIFAR-10N: CIFAR-10 with human labels (--set label=worse|aggre|random1|random2|random3)."""

    @dataclass
    class Options:
        label: Literal["worse", "aggre", "random1", "random2", "random3"] = field(default="worse", metadata={
            "help": "which human label set trains the model",
            "source": "Wei et al. ICLR 2022, Table 1; 'worse' is the set IDO and most papers report"})

    name = "cifar10n"
    real_noise = True
    human_file = "CIFAR-10_human.pt"
    label_keys = {"worse": "worse_label", "aggre": "aggre_label", "random1": "random_label1",
                  "random2": "random_label2", "random3": "random_label3"}
    clean_keys = dict.fromkeys(label_keys, "clean_label")
    expected = {"train": 50_000, "test": 10_000}


@DATASETS.register("cifar100n")
class CIFAR100N(HumanLabels, CIFAR100):
    """CIFAR-100N: CIFAR-100 with human labels (--set label=noisy|noisy_coarse)."""

    @dataclass
    class Options:
        label: Literal["noisy", "noisy_coarse"] = field(default="noisy", metadata={
            "help": "fine (100 classes) or coarse (20 superclasses) human labels",
            "source": "Wei et al. ICLR 2022; IDO's CIFAR-100N column uses the fine 'noisy' set"})

    name = "cifar100n"
    real_noise = True
    asym_map = None
    human_file = "CIFAR-100_human.pt"
    label_keys = {"noisy": "noisy_label", "noisy_coarse": "noisy_coarse_label"}
    clean_keys = {"noisy": "clean_label", "noisy_coarse": "clean_coarse_label"}
    expected = {"train": 50_000, "test": 10_000}

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        n = 20 if self.opts.label == "noisy_coarse" else 100
        return tuple(f"class{i}" for i in range(n))

    def read(self, root: str | None) -> RawSplits:
        raw = super().read(root)
        if self.opts.label == "noisy_coarse":  # test on the coarse labels too
            test = unpickle(find_folder(root, self.folder, "test") / "test")
            raw.test_labels = np.asarray(test["coarse_labels"], dtype=np.int64)
        return raw

"""``python -m bench data check``: what a data set's files hold, without training.

Counts per split and class (beside the real data set's documented sizes), label ranges,
missing and unreadable image files, and the realised noise rate where clean labels exist.
A layout that does not match (a list file or folder missing) fails in one line naming the
expected path, as a run would; faults inside a matching layout are listed, not raised.
"""
from __future__ import annotations

import os

import numpy as np

from datasets.base import Dataset, split_problems


def _unreadable(files: np.ndarray) -> list[str]:
    from PIL import Image

    bad = []
    for f in files:
        if not os.path.isfile(f):
            continue  # reported as missing
        try:
            with Image.open(f) as im:
                im.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            bad.append(str(f))
    return bad


def _class_counts(labels: np.ndarray, num_classes: int) -> str:
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
    if num_classes <= 20:
        return "per class: " + " ".join(str(int(c)) for c in counts)
    empty = int((counts == 0).sum())
    return f"per class: min {counts.min()}, max {counts.max()}, classes with no sample {empty}"


def check_dataset(ds: Dataset, root: str | None, decode: bool = True) -> tuple[list[str], int]:
    """The report's lines and the number of faults found."""
    ds.check_root(root)
    raw = ds.read(root)
    lines = [f"data set {ds.name} at {root or '(default location)'}; options {ds.resolved_options() or '{}'}; "
             f"{ds.num_classes} classes"]
    faults = 0
    for split, images, labels in raw.splits():
        expected = ds.expected.get(split if split != "imagenet" else "imagenet_val")
        exp = f" (the real data set: {expected:,})" if expected else ""
        lines.append(f"{split}: {len(labels):,} samples{exp}; labels {labels.min() if len(labels) else '-'}.."
                     f"{labels.max() if len(labels) else '-'}; {_class_counts(labels, ds.num_classes)}")
        problems = split_problems(split, images, labels, ds.num_classes)
        if images.dtype != np.uint8 and decode:
            bad = _unreadable(images)
            if bad:
                problems.append(f"{len(bad)} {split} image files cannot be decoded, e.g. {bad[0]}")
        for p in problems:
            lines.append(f"  FAULT: {p}")
        faults += len(problems)
    if raw.train_clean is not None:
        rate = float(np.mean(raw.train_clean != raw.train_labels))
        lines.append(f"realised noise rate of the given training labels against the clean ones: {rate:.4f}")
    elif ds.real_noise:
        lines.append("no clean training labels: the noise rate is unknown")
    else:
        lines.append("training labels are clean; synthetic noise is applied at run time")
    notes = getattr(ds, "notes", None)
    lines += [f"note: {n}" for n in (notes(root) if notes else [])]
    lines.append(f"{faults} fault(s) found" if faults else "no faults found")
    return lines, faults

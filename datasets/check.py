"""``python -m bench data check``: what a data set's files hold, without training.

Counts per split and class (beside the real data set's documented sizes), label ranges,
missing and unreadable image files, and the realised noise rate where clean labels exist.
A layout that does not match (a list file or folder missing) fails in one line naming the
expected path, as a run would; faults inside a matching layout are listed, not raised.

A packed copy (``data pack``, :mod:`datasets.pack`) is also checked against its manifest
``bench-pack.json`` (counts, keys and labels per split; every image's shorter side at the
manifest's, or the original's where that was smaller; headers only, so every image is
measured) and, with ``original`` (default: the manifest's source root, if it still exists),
against the original's lists: same splits, keys in the same order and labels.
"""
from __future__ import annotations

import os

import numpy as np

from bench.common.errors import UsageError
from datasets.base import Dataset, RawSplits, split_problems
from datasets.pack import MANIFEST, OPTIONS_FILE, compare_tables, read_manifest, split_summary, split_table


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


def _shorter_side(path: str) -> int | None:
    """The shorter side from the image's header (nothing decoded); None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return min(im.size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def check_pack(ds: Dataset, root: str, raw: RawSplits, original: str | None) -> tuple[list[str], int]:
    """Lines and faults of a packed copy against its manifest and its original (see the module
    docstring); ``original`` None: the manifest's source, if it still exists."""
    lines: list[str] = []
    problems: list[str] = []
    try:
        manifest = read_manifest(root)
        table = split_table(raw, root)
    except UsageError as exc:  # a damaged manifest, or files outside the root
        return [f"  FAULT: {exc}"], 1
    if manifest is None:
        if os.path.isfile(os.path.join(root, OPTIONS_FILE)):
            problems.append(f"an unfinished packed copy: {OPTIONS_FILE} but no {MANIFEST} (images may be missing "
                            "unnoticed where the loader lists folders); rerun the same `data pack` to finish it")
        else:
            lines.append(f"no {MANIFEST} in {root}: not a packed copy; comparing its lists with --original only")
    else:
        side, source = manifest.get("short_side"), manifest.get("source")
        how = f"shorter side {side} px, JPEG quality {manifest.get('quality')}" if side else "files copied unchanged"
        lines.append(f"packed copy ({MANIFEST}) of {manifest.get('dataset')} from {source}: {how}")
        if manifest.get("dataset") != ds.name:
            problems.append(f"{MANIFEST} is a copy of data set {manifest.get('dataset')}, not {ds.name}")
        if manifest.get("options") != ds.resolved_options():
            lines.append(f"note: packed with options {manifest.get('options')}, checked with {ds.resolved_options()}")
        want, got = manifest.get("splits", {}), split_summary(table)
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name), got.get(name)
            if w is None or g is None:
                problems.append(f"{name}: split {'not in' if w is None else 'missing from'} the manifest's lists")
            elif w["count"] != g["count"]:
                problems.append(f"{name}: {g['count']:,} samples, the manifest says {w['count']:,}")
            elif w["sha1"] != g["sha1"]:
                problems.append(f"{name}: keys or labels differ from the manifest's (SHA-1 {g['sha1'][:12]} instead "
                                f"of {w['sha1'][:12]})")
        if original is None and source and os.path.isdir(source):
            original = source
        elif original is None:
            lines.append(f"note: the original at {source} is gone: checked against the manifest only")
    compared = False
    if original is not None:
        try:
            orig_table = split_table(type(ds)(ds.opts).read(original), original)
        except UsageError as exc:
            problems.append(f"the original at {original} cannot be read: {exc}")
        else:
            compared = True
            lines.append(f"compared with the original at {original}")
            problems += compare_tables(orig_table, table)
    if manifest is not None:
        problems += _size_problems(root, table, manifest, original if compared else None)
    lines += [f"  FAULT: {p}" for p in problems]
    if not problems and manifest is not None:
        lines.append("packed copy: matches its manifest" + (" and the original" if compared else ""))
    return lines, len(problems)


def _size_problems(root: str, table: dict, manifest: dict, original: str | None) -> list[str]:
    """Every packed image's shorter side: the manifest's, or the original's where that was
    smaller (without the original: at most the manifest's). Byte copies: the original's size.
    With the original: no packed image older than its original (changed after packing)."""
    side = manifest.get("short_side")
    skip = set(manifest.get("undecodable", [])) | set(manifest.get("missing", []))
    keys = sorted({k for name, (ks, _) in table.items() if name != "train_clean" for k in ks} - skip)
    wrong: list[str] = []
    stale: list[str] = []
    for key in keys:
        packed = os.path.join(root, key)
        if not os.path.isfile(packed):
            continue  # reported as missing
        if original is not None and os.path.isfile(src := os.path.join(original, key)):
            if os.stat(src).st_mtime_ns > os.stat(packed).st_mtime_ns:
                stale.append(key)
        if side is None:
            if original is not None and os.path.isfile(src := os.path.join(original, key)):
                if os.path.getsize(src) != os.path.getsize(packed):
                    wrong.append(f"{key} ({os.path.getsize(packed)} bytes, the original {os.path.getsize(src)})")
            continue
        got = _shorter_side(packed)
        if got is None:
            continue  # reported as unreadable when decoding
        src = os.path.join(original, key) if original is not None else None
        want = _shorter_side(src) if src is not None and os.path.isfile(src) else None
        if want is not None and got != min(want, side):
            wrong.append(f"{key} (shorter side {got} px, expected {min(want, side)})")
        elif want is None and got > side:
            wrong.append(f"{key} (shorter side {got} px, above {side})")
    problems = []
    if wrong:
        what = "differ in size from their originals" if side is None else \
            f"do not have the shorter side of {side} px (or the original's, where smaller)"
        problems.append(f"{len(wrong)} packed images {what}, e.g. {wrong[0]}")
    if stale:
        problems.append(f"{len(stale)} packed images are older than their originals (changed since packing), e.g. "
                        f"{stale[0]}: rerun the same `data pack` to update them")
    return problems


def check_dataset(ds: Dataset, root: str | None, decode: bool = True,
                  original: str | None = None) -> tuple[list[str], int]:
    """The report's lines and the number of faults found; a packed copy (a ``bench-pack.json``
    or ``bench-pack.options.json`` in ``root``, or ``original`` given) is also checked by
    :func:`check_pack`."""
    if original is not None and not ds.on_disk:
        raise UsageError(f"--original: data set {ds.name} is not image files; only packed copies of on-disk data sets "
                         "are compared with their original")
    if original is not None and not os.path.isdir(original):
        raise UsageError(f"--original {original}: no such folder")
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
    packed = root and any(os.path.isfile(os.path.join(root, f)) for f in (MANIFEST, OPTIONS_FILE))
    if root and ds.on_disk and (original is not None or packed):
        more, n = check_pack(ds, root, raw, original)
        lines += more
        faults += n
    lines.append(f"{faults} fault(s) found" if faults else "no faults found")
    return lines, faults

"""``python -m bench data pack``: a packed copy of an on-disk image data set, for repeated epochs.

Every image the data set's splits use (train, test, extra test sets) is written once, at the
SAME relative path under ``--out``, resized so its shorter side is ``--short-side`` (default:
the data set's protocol resize, ``Dataset.resize``, e.g. 256 for Clothing1M and WebVision) and
saved as an RGB JPEG without EXIF (``--quality``, default 90). Every list and annotation file
the loader reads is copied beside them, so every loader reads the packed copy unchanged as
``--data-root OUT``; nothing in the loaders or the trainer knows about packing.

The format: resized JPEG files in the original layout, chosen because

1. the harness's samplers need random access by dataset index (class-balanced epoch pools
   drawn afresh each epoch, unlabeled batches drawn per step, per-sample state keyed by index),
   which sequential tar shards (WebDataset) only give with shuffle buffers that change the order;
2. it needs no new dependency and no loader change: the packed copy is just another data root;
3. decoding cost scales with pixel count, so a 256-px shorter side decodes several times faster
   than full-size photos (500x400 JPEGs of a Clothing1M-layout tree: decode, Resize(256) and
   CenterCrop(224) on one core about 4.5 times as fast from the copy; README, "Packed copies").

A run at another ``--image-size`` resizes to ``image_size * resize / crop`` (e.g. 341 px for 299-px
crops): pack with at least that ``--short-side``, or the loader upscales the packed images.

What is done to each image:

- shorter side above the target: decoded, converted to RGB (as the loader does), resized with
  ``torchvision.transforms.functional.resize`` (bilinear, antialiased on PIL images: exactly what
  the loader's own ``Resize`` gives) and saved as JPEG, whatever the file's suffix says (PIL
  reads by content, so a ``.png`` name may then hold JPEG data). EXIF orientation is not applied,
  as the loader does not apply it either;
- shorter side at or below the target: never upscaled, the file is copied byte for byte (no
  second JPEG generation, and the loader sees exactly what it saw in the original);
- no target (a data set without a protocol resize, such as Animal-10N's or Tiny-ImageNet's
  native 64-px crops, and no ``--short-side``): every file is copied byte for byte;
- a file that cannot be decoded (found while resizing): copied unchanged and reported (count and
  first path), so a run on the packed copy skips and counts it exactly as on the original.
  (Leaving it out would make it a missing file, and a run refuses a data set with missing files.)
- a listed file missing from the source: reported, and missing from the copy too.

Packing resumes: each image is written to a temporary name in its own folder and renamed
(``os.replace``; temporary files of a killed pack are removed by the next run), a rerun skips
the images already there (unless the source file is newer than its copy, or the copy is damaged,
e.g. larger than the target though its source decodes: those are packed again), and the
manifest ``bench-pack.json`` (data set, options, source root, short side, quality; per split the
count and a SHA-1 of the sorted (relative key, label) pairs) is written only once every image is
done and the packed copy has been read back with the data set's own loader and found to hold
the same keys and labels as the original: a copy without a manifest is unfinished (loaders that
list folders, Animal-10N's, Tiny-ImageNet's and ``folder``'s, would read it without complaint;
``data check`` reports it). ``bench-pack.options.json``, written first, records the options, so a
rerun with other options is refused instead of mixing two sizes in one copy. The list files are
copied first (and again whenever the source's differ). ``data check`` verifies a packed copy
against its manifest and, where it still exists, the original (:mod:`datasets.check`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common.cores import process_pool, usable_cores
from bench.common.errors import UsageError
from datasets.base import Dataset, RawSplits, write_atomic
from datasets.files import IMAGE_SUFFIXES

MANIFEST = "bench-pack.json"
OPTIONS_FILE = "bench-pack.options.json"
FORMAT = "bench-pack/1"
DEFAULT_QUALITY = 90

# what a worker did with one image
RESIZED, COPIED, DONE, UNDECODABLE, MISSING = "resized", "copied", "done", "undecodable", "missing"
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError)  # + DecompressionBombError


# ---------------------------------------------------------------------------------------------
# keys and digests


def relative_keys(files: Iterable[str], root: str) -> list[str]:
    """Each file's path relative to ``root`` (the packed copy's key); a file outside the root
    is refused in one line."""
    root = os.path.abspath(root)
    keys, outside = [], []
    for f in files:
        rel = os.path.relpath(os.path.abspath(str(f)), root)
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            outside.append(str(f))
        keys.append(rel)
    if outside:
        raise UsageError(f"{len(outside)} listed files are outside --data-root {root}, e.g. {outside[0]}: "
                         "a packed copy holds only files under the root")
    return keys


def split_digest(keys: list[str], labels: np.ndarray) -> str:
    """SHA-1 of the sorted (relative key, label) pairs of one split."""
    h = hashlib.sha1()
    for key, label in sorted(zip(keys, (int(y) for y in labels), strict=True)):
        h.update(f"{key}\t{label}\n".encode())
    return h.hexdigest()


def split_table(raw: RawSplits, root: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per split: (relative keys, labels); the clean training labels, where the data set has
    them, as the pseudo-split ``train_clean`` (same keys)."""
    table = {name: (relative_keys(images, root), np.asarray(labels, np.int64)) for name, images, labels in raw.splits()}
    if raw.train_clean is not None:
        table["train_clean"] = (table["train"][0], np.asarray(raw.train_clean, np.int64))
    return table


def split_summary(table: dict[str, tuple[list[str], np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {name: {"count": len(keys), "sha1": split_digest(keys, labels)} for name, (keys, labels) in table.items()}


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The packed copy's manifest, or None when ``root`` holds none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}); rerun `data pack` to rewrite it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is not a {FORMAT} manifest")
    return manifest


# ---------------------------------------------------------------------------------------------
# the files a loader reads besides the images


def support_files(ds: Dataset, root: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) a loader needs besides the images: its list and annotation files (copied)
    and the folders it expects even when they hold no image (created). Data sets without an
    entry here get every non-image file and every folder under the root."""
    name = ds.name
    files: list[Path] = []
    dirs: list[Path] = []
    regular = lambda folder: sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []  # noqa: E731
    subdirs = lambda folder: sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []  # noqa: E731
    if name == "clothing1m":
        lists = ds.lists_dir(root)  # type: ignore[attr-defined]
        files = sorted(p for p in regular(lists) if p.suffix == ".txt")
        dirs = [root / "images"]
    elif name == "webvision":
        files = regular(root / "info")
        dirs = [root / "val_images_256", *(([root / "imagenet" / "val"] + subdirs(root / "imagenet" / "val"))
                                           if (root / "imagenet" / "val").is_dir() else [])]
    elif name == "food101n":
        files = regular(root / "Food-101N_release" / "meta") + regular(root / "food-101" / "meta")
        dirs = [root / "Food-101N_release" / "images", root / "food-101" / "images"]
    elif name == "tiny-imagenet":
        files = [p for p in (root / "wnids.txt", root / "words.txt", root / "val" / "val_annotations.txt")
                 if p.is_file()]
        files += sorted((root / "train").glob("*/*_boxes.txt"))
        dirs = [root / "val" / "images", *(d / "images" for d in subdirs(root / "train"))]
    elif name == "animal10n":
        dirs = [root / "training", root / "testing"]
    elif name == "folder":
        for split in ("train", "test", "val"):
            dirs += [root / split, *subdirs(root / split)]  # class folders, empty ones too
        labels = getattr(ds.opts, "labels", None)
        if labels and _inside(Path(labels), root):
            files = [Path(labels)]
    else:
        for folder, sub, names in os.walk(root):
            dirs += [Path(folder) / d for d in sub]
            files += [Path(folder) / n for n in names if Path(n).suffix.lower() not in IMAGE_SUFFIXES
                      and n not in (MANIFEST, OPTIONS_FILE)]
    return files, [d for d in dirs if d.is_dir()]


def _inside(path: Path, root: Path) -> bool:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return not (rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel))


# ---------------------------------------------------------------------------------------------
# writing


TMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")  # what datasets.base.temp_name makes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(folders: Iterable[str]) -> int:
    """Remove the temporary files a killed pack left behind (a worker killed mid-write cannot
    remove its own): those of processes no longer alive. The loaders ignore them anyway
    (``.tmp`` is no image suffix)."""
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for e in entries:
            m = TMP.match(e.name)
            if m and e.is_file() and not _alive(int(m.group(1))):
                os.unlink(e.path)
                removed += 1
    return removed


def pack_image(job: tuple[str, str, int | None, int]) -> tuple[str, str, int, int, str]:
    """Pack one image: (source, destination, target shorter side or None, JPEG quality) ->
    (destination, what was done, bytes before, bytes after, what an earlier copy was: "" none,
    "stale" older than its source, "damaged"). An image already in the copy is kept unless its
    source is newer (changed since it was packed) or the copy is damaged. Runs in the pool's
    workers."""
    from PIL import Image

    src, dst, side, quality = job
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return dst, MISSING, 0, 0, ""
    before = st.st_size
    try:
        old = os.stat(dst)
    except FileNotFoundError:
        old = None
    if old is not None and old.st_mtime_ns >= st.st_mtime_ns:
        status = _already_there(src, dst, side)
        if status is not None:
            return dst, status, before, old.st_size, ""
    replaced = "" if old is None else "stale" if old.st_mtime_ns < st.st_mtime_ns else "damaged"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    status = COPIED
    if side is not None:
        try:
            with Image.open(src) as im:
                if min(im.size) > side:
                    from torchvision.transforms import functional as TF

                    small = TF.resize(im.convert("RGB"), side)  # the loader's Resize(side), exactly
                    small.info = {}  # no EXIF, ICC profile or comment carried over

                    def save(tmp: str) -> None:
                        small.save(tmp, format="JPEG", quality=quality)

                    write_atomic(dst, save)
                    return dst, RESIZED, before, os.path.getsize(dst), replaced
        except (*DECODE_ERRORS, Image.DecompressionBombError):
            status = UNDECODABLE
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))
    return dst, status, before, os.path.getsize(dst), replaced


def _already_there(src: str, dst: str, side: int | None) -> str | None:
    """What an earlier run did with an image already in the copy: DONE, or UNDECODABLE where it
    copied the file unchanged because the source cannot be decoded (a copy whose header cannot
    be read or whose shorter side is above the target; the source is decoded again to tell
    that from a damaged copy). None: the copy is damaged and is packed again."""
    if side is None:
        return DONE
    from PIL import Image

    try:
        with Image.open(dst) as im:
            if min(im.size) <= side:
                return DONE
    except (*DECODE_ERRORS, Image.DecompressionBombError):
        pass
    try:
        with Image.open(src) as im:
            if min(im.size) > side:
                im.load()
    except (*DECODE_ERRORS, Image.DecompressionBombError):
        return UNDECODABLE
    return None


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy a list file unless the copy already holds the same bytes; True when written."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(dst), lambda tmp: shutil.copyfile(src, tmp))
    return True


def _write_json_if_changed(path: Path, obj: dict[str, Any]) -> bool:
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    write_atomic(str(path), lambda tmp: Path(tmp).write_text(text))
    return True


def _mb(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


@dataclass
class Tally:
    counts: dict[str, int]
    before: int = 0
    after: int = 0
    undecodable: list[str] = field(default_factory=list)  # destinations
    replaced: dict[str, int] = field(default_factory=lambda: {"stale": 0, "damaged": 0})

    def add(self, dst: str, status: str, before: int, after: int, replaced: str) -> None:
        self.counts[status] += 1
        if replaced:
            self.replaced[replaced] += 1
        self.before += before
        self.after += after
        if status == UNDECODABLE:
            self.undecodable.append(dst)


def check_out(root: Path, out: Path) -> None:
    """Refuse an output folder that is the data root, lies inside it or holds it."""
    r, o = os.path.realpath(root), os.path.realpath(out)
    if o == r:
        raise UsageError(f"--out {out} is the --data-root itself; pack into a new folder")
    if _inside(Path(o), Path(r)):
        raise UsageError(f"--out {out} is inside --data-root {root}; pack into a folder outside it (the loader "
                         "would otherwise find the packed images among the originals)")
    if _inside(Path(r), Path(o)):
        raise UsageError(f"--data-root {root} is inside --out {out}; pack into a folder of its own")


def pack_dataset(ds: Dataset, data_root: str | None, out: str, short_side: int | None = None,
                 quality: int = DEFAULT_QUALITY, jobs: int | None = None,
                 echo: Callable[[str], None] = print, progress_s: float = 20.0) -> dict[str, Any]:
    """Pack ``ds`` from ``data_root`` into ``out`` (see the module docstring); returns the
    manifest. Bad input raises :class:`UsageError` before anything is written."""
    if not ds.on_disk:
        raise UsageError(f"data set {ds.name} is held in memory (it is not image files): there is nothing to pack; "
                         "data pack is for on-disk data sets (clothing1m, webvision, food101n, animal10n, "
                         "tiny-imagenet, folder)")
    if short_side is not None and short_side < 1:
        raise UsageError(f"--short-side {short_side}: must be at least 1 (pixels)")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality {quality}: must be in [1, 100]")
    jobs = usable_cores() if jobs is None else jobs
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    if not out:
        raise UsageError("data pack needs --out DIR (the folder of the packed copy)")
    root = ds.root(data_root)  # type: ignore[attr-defined]  (FileDataset: one line if missing)
    out_dir = Path(out)
    check_out(root, out_dir)
    raw = ds.read(str(root))
    table = split_table(raw, str(root))
    if short_side is None:
        side, why = ds.resize, "the data set's protocol resize"
    else:
        side, why = short_side, "--short-side"
    options = {"format": FORMAT, "dataset": ds.name, "options": ds.resolved_options(),
               "source": os.path.abspath(root), "short_side": side, "quality": quality if side else None}
    # a folder that holds something else, or a copy made with other options, is refused
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        made = out_dir / OPTIONS_FILE
        if not made.is_file():
            raise UsageError(f"--out {out} is not empty and holds no packed copy ({OPTIONS_FILE}); choose an "
                             "empty or new folder")
        try:
            previous = json.loads(made.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != options:
            raise UsageError(f"--out {out} holds a packed copy made with other options ({made}: {previous}); "
                             "pack into another folder, or delete it first")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json_if_changed(out_dir / OPTIONS_FILE, options)
    manifest = read_manifest(out_dir)
    planned = split_summary(table)
    if manifest is not None and manifest.get("splits") != planned:
        (out_dir / MANIFEST).unlink()  # the source's lists changed: the copy is unfinished again
        echo(f"the source's lists differ from {out_dir / MANIFEST}: updating the copy (manifest removed until done)")

    keys = sorted({k for name, (ks, _) in table.items() if name != "train_clean" for k in ks})
    counts = ", ".join(f"{name} {len(ks):,}" for name, (ks, _) in table.items() if name != "train_clean")
    if side:
        what = f"shorter side {side} px ({why}; smaller images are copied byte for byte), JPEG quality {quality}"
    else:
        what = (f"files copied byte for byte ({ds.name} has no protocol resize: it trains on native-size images; "
                "give --short-side N to resize)")
    echo(f"data pack: {ds.name} from {root} to {out_dir}: {len(keys):,} images ({counts}); {what}; "
         f"{min(jobs, max(len(keys), 1))} jobs")

    # the list files first: an unfinished copy already reads as one whose images are missing
    files, dirs = support_files(ds, root)
    written = 0
    for d in dirs:
        (out_dir / d.relative_to(root)).mkdir(parents=True, exist_ok=True)
    for f in files:
        written += _copy_if_changed(f, out_dir / Path(f).relative_to(root))
    size = sum(f.stat().st_size for f in files)
    echo(f"list files: {len(files)} ({_mb(size)}), {written} written, {len(files) - written} already the same")

    tally = Tally({s: 0 for s in (RESIZED, COPIED, DONE, UNDECODABLE, MISSING)})
    src_root, dst_root = os.path.abspath(root), os.path.abspath(out_dir)
    work = [(os.path.join(src_root, k), os.path.join(dst_root, k), side, quality) for k in keys]
    started = last = time.perf_counter()
    for n, result in enumerate(_run(work, jobs), 1):
        tally.add(*result)
        now = time.perf_counter()
        if now - last >= progress_s and n < len(work):
            last = now
            rate = n / (now - started)
            echo(f"  {n:,}/{len(work):,} images ({n / len(work):.0%}), {rate:,.0f} images/s, "
                 f"about {(len(work) - n) / rate / 60:.1f} min left")
    elapsed = time.perf_counter() - started
    stale = remove_stale_tmp(sorted({os.path.dirname(w[1]) for w in work}))
    if stale:
        echo(f"removed {stale} temporary files an interrupted pack left behind")
    c = tally.counts
    undecodable = sorted(os.path.relpath(d, dst_root) for d in tally.undecodable)
    missing = sorted(k for k in keys if not os.path.isfile(os.path.join(src_root, k))) if c[MISSING] else []
    done_now = len(work) - c[DONE] - c[MISSING]
    echo(f"images: {len(work):,} in {elapsed:.1f} s ({done_now / max(elapsed, 1e-9):,.0f} images/s written): "
         f"{c[RESIZED]:,} resized, {c[COPIED]:,} copied as they are, {c[DONE]:,} already there"
         + (f", {c[UNDECODABLE]:,} undecodable" if c[UNDECODABLE] else "")
         + (f", {c[MISSING]:,} missing in the source" if c[MISSING] else "")
         + (f"; {tally.replaced['stale']:,} written over copies older than their source" if tally.replaced["stale"]
            else "")
         + (f"; {tally.replaced['damaged']:,} written over damaged copies" if tally.replaced["damaged"] else ""))
    echo(f"bytes: {_mb(tally.before)} in the source -> {_mb(tally.after)} packed "
         f"({tally.after / max(tally.before, 1):.1%})")
    if c[UNDECODABLE]:
        echo(f"warning: {c[UNDECODABLE]} images cannot be decoded, e.g. {os.path.join(src_root, undecodable[0])}: "
             "copied unchanged, so a run skips and counts them as it does on the original")
    if c[MISSING]:
        echo(f"warning: {c[MISSING]} listed images are missing in the source, e.g. "
             f"{os.path.join(src_root, missing[0])}: missing in the copy too (`data check` reports them; "
             "a run refuses the data set until they are there)")

    verify_copy(ds, out_dir, table)
    manifest = {**options, "splits": planned, "images": len(keys), "undecodable": undecodable, "missing": missing,
                "list_files": sorted(str(Path(f).relative_to(root)) for f in files)}
    if _write_json_if_changed(out_dir / MANIFEST, manifest):
        echo(f"manifest written: {out_dir / MANIFEST}")
    else:
        echo(f"manifest unchanged: {out_dir / MANIFEST}")
    echo(f"done: use it as --data-root {out_dir}")
    return manifest


def _run(work: list, jobs: int) -> Iterable[tuple[str, str, int, int, str]]:
    """The images packed by ``jobs`` processes (in this one when 1), results as they finish."""
    if jobs == 1 or len(work) <= 1:
        yield from map(pack_image, work)
        return
    # the resize's module imported once, in the pool's server, and inherited by every worker
    with process_pool(min(jobs, len(work)), preload=("datasets.pack", "torchvision.transforms.functional")) as pool:
        yield from pool.imap_unordered(pack_image, work, chunksize=max(1, min(64, len(work) // (jobs * 8))))


def verify_copy(ds: Dataset, out_dir: Path, table: dict[str, tuple[list[str], np.ndarray]]) -> None:
    """Read the packed copy with the data set's own loader: it must hold the same splits, keys
    (in the same order) and labels as the original, else no manifest is written."""
    copy = type(ds)(ds.opts)
    problems = compare_tables(table, split_table(copy.read(str(out_dir)), str(out_dir)))
    if problems:
        raise UsageError(f"the packed copy at {out_dir} does not read like the original: {problems[0]}; "
                         "no manifest written")


def compare_tables(want: dict[str, tuple[list[str], np.ndarray]],
                   got: dict[str, tuple[list[str], np.ndarray]], what: str = "the original") -> list[str]:
    """Differences between two split tables (counts, keys, labels), one line per split."""
    problems = []
    for name in sorted(set(want) | set(got)):
        if name not in got:
            problems.append(f"{name}: {what} has this split, the copy does not")
            continue
        if name not in want:
            problems.append(f"{name}: the copy has this split, {what} does not")
            continue
        (wk, wy), (gk, gy) = want[name], got[name]
        if len(wk) != len(gk):
            extra = sorted(set(gk) - set(wk))
            gone = sorted(set(wk) - set(gk))
            eg = f"; e.g. {gone[0]} not in the copy" if gone else f"; e.g. {extra[0]} only in the copy" if extra else ""
            problems.append(f"{name}: {len(gk):,} samples, {what} has {len(wk):,}{eg}")
        elif wk != gk:
            i = next(i for i, (a, b) in enumerate(zip(wk, gk, strict=True)) if a != b)
            problems.append(f"{name}: keys differ from {what}'s (first at sample {i}: {gk[i]} instead of {wk[i]})")
        elif not np.array_equal(wy, gy):
            i = int(np.flatnonzero(wy != gy)[0])
            n = int((wy != gy).sum())
            problems.append(f"{name}: {n} labels differ from {what}'s (first: {wk[i]}, {gy[i]} instead of {wy[i]})")
    return problems

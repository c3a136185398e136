"""``python -m bench data pack`` (datasets/pack.py) and ``data check`` on packed copies.

Every on-disk layout of tests/fixtures_data.py is packed and read back with its own loader (same
splits, relative keys and labels; shorter sides as asked); `data check` passes on the copy and
fails on a deleted image, an altered label and a wrongly sized image; packing resumes and a rerun
over a finished copy writes nothing; bad input is one line and exit 2; and a training batch from
the packed copy differs from the original's only by the JPEG re-encoding.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets  # noqa: F401  (registers the data sets)
from bench.cli import main
from bench.common.options import build_options
from datasets.base import DATASETS
from datasets.pack import MANIFEST, OPTIONS_FILE
from tests.fixtures_data import (
    make_animal10n,
    make_clothing1m,
    make_folder,
    make_food101n,
    make_tiny_imagenet,
    make_webvision,
)

LAYOUTS = {"clothing1m": make_clothing1m, "webvision": make_webvision, "food101n": make_food101n,
           "animal10n": make_animal10n, "tiny-imagenet": make_tiny_imagenet, "folder": make_folder}
# mean absolute difference (0..255 pixel units) between a batch read from the packed copy and
# from the original: JPEG quality 90 of smooth photo-like images is about 0.5; a wrong resize,
# crop or colour conversion is tens
REENCODE_BOUND = 2.0


def bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def pack(src: Path, out: Path, name: str, capsys, *extra: str) -> str:
    code, stdout, err = bench(["data", "pack", "--dataset", name, "--data-root", str(src), "--out", str(out),
                               *extra], capsys)
    assert code == 0, err
    return stdout


def check(root: Path, name: str, capsys, *extra: str) -> tuple[int, str]:
    code, stdout, err = bench(["data", "check", "--dataset", name, "--data-root", str(root), *extra], capsys)
    assert code in (0, 1), err
    return code, stdout


def dataset(name: str, **opts: str):
    cls = DATASETS.get(name)
    return cls(build_options(cls, opts, "data set"))


def photo(path: Path, width: int, height: int, seed: int) -> None:
    """A smooth photo-like JPEG (random noise would make every re-encoding look lossy)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    f, p = rng.uniform(2, 8, (3, 2)), rng.uniform(0, 6, 3)
    img = np.stack([128 + 90 * np.sin(f[c, 0] * x + p[c]) * np.cos(f[c, 1] * y) for c in range(3)], -1)
    img[int(0.3 * height):int(0.6 * height), int(0.2 * width):int(0.5 * width)] = rng.uniform(0, 255, 3)  # an edge
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)).save(path, quality=95)


def photo_clothing1m(root: Path) -> list[str]:
    """The Clothing1M fixture with photo-sized images: most above the 256-px target, one at it,
    one below (copied as it is). Returns the training keys."""
    make_clothing1m(root)
    lists = root / "annotations"
    keys = (lists / "noisy_train_key_list.txt").read_text().split()
    test = (lists / "clean_test_key_list.txt").read_text().split()
    sizes = [(400, 320), (300, 500), (256, 300), (200, 150)]
    for i, key in enumerate(keys[:12] + test[:3]):
        photo(root / key, *sizes[i % len(sizes)], seed=i)
    return keys


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def table(raw, root: Path) -> dict[str, tuple[list[str], list[int]]]:
    out = {name: ([os.path.relpath(f, root) for f in images], list(labels)) for name, images, labels in raw.splits()}
    if raw.train_clean is not None:
        out["clean"] = (out["train"][0], list(raw.train_clean))
    return out


@pytest.mark.parametrize("name", [*sorted(LAYOUTS), "folder-labels"])
def test_every_layout_packs_and_reads_back_alike(name, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    opts, packed_opts = {}, {}
    if name == "folder-labels":
        name = "folder"
        make_folder(src, with_labels=True)
        opts, packed_opts = {"labels": str(src / "labels.txt")}, {"labels": str(out / "labels.txt")}
    else:
        LAYOUTS[name](src)
    sets = [a for k, v in opts.items() for a in ("--set", f"{k}={v}")]
    text = pack(src, out, name, capsys, "--short-side", "8", "--jobs", "2", *sets)
    assert "shorter side 8 px (--short-side" in text and f"manifest written: {out / MANIFEST}" in text
    original = dataset(name, **opts).load(str(src))
    copy = dataset(name, **packed_opts).load(str(out))  # the loader, unchanged, on the packed copy
    assert table(copy, out) == table(original, src)  # same splits, relative keys (in order) and labels
    for _, images, _ in copy.splits():
        for f in images:
            with Image.open(f) as im:
                assert min(im.size) == 8 and im.mode == "RGB" and im.format == "JPEG" and not im.getexif()
    sets = [a for k, v in packed_opts.items() for a in ("--set", f"{k}={v}")]
    code, report = check(out, name, capsys, *sets)
    assert code == 0 and "packed copy: matches its manifest and the original" in report, report


def test_default_short_side_is_the_protocol_resize_and_native_sets_are_byte_copies(tmp_path, capsys):
    src, out = tmp_path / "c1m", tmp_path / "c1m-packed"
    keys = photo_clothing1m(src)
    text = pack(src, out, "clothing1m", capsys)
    assert "shorter side 256 px (the data set's protocol resize" in text
    assert "8 resized, 27 copied as they are" in text  # 400x320 and 300x500 resized; the rest at or below 256
    for key in keys[:12]:
        with Image.open(src / key) as a, Image.open(out / key) as b:
            assert min(b.size) == min(256, min(a.size))
            assert b.size == a.size or abs(b.size[0] / b.size[1] - a.size[0] / a.size[1]) < 0.01
            if min(a.size) <= 256:
                assert (out / key).read_bytes() == (src / key).read_bytes()  # never upscaled: copied as it is
    a10n, a10n_out = tmp_path / "a10n", tmp_path / "a10n-packed"
    make_animal10n(a10n)
    text = pack(a10n, a10n_out, "animal10n", capsys)
    assert "files copied byte for byte (animal10n has no protocol resize" in text
    for f in a10n.rglob("*.jpg"):
        assert (a10n_out / f.relative_to(a10n)).read_bytes() == f.read_bytes()
    code, report = check(a10n_out, "animal10n", capsys)
    assert code == 0 and "files copied unchanged" in report


def test_data_check_finds_a_deleted_image_an_altered_label_and_a_wrong_size(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    keys = photo_clothing1m(src)
    pack(src, out, "clothing1m", capsys, "--jobs", "2")
    (out / keys[0]).unlink()
    code, report = check(out, "clothing1m", capsys)
    assert code == 1 and f"FAULT: 1 train image files are missing, e.g. {out / keys[0]}" in report
    pack(src, out, "clothing1m", capsys)  # resumes: the image comes back
    assert check(out, "clothing1m", capsys)[0] == 0

    kv = out / "annotations" / "noisy_label_kv.txt"
    good = kv.read_text()
    lines = good.splitlines()
    key, label = lines[4].split()
    lines[4] = f"{key} {(int(label) + 1) % 14}"
    kv.write_text("\n".join(lines) + "\n")
    code, report = check(out, "clothing1m", capsys)
    assert code == 1
    assert "FAULT: train: keys or labels differ from the manifest's" in report
    assert f"FAULT: train: 1 labels differ from the original's (first: {key}" in report
    kv.write_text(good)

    photo(out / keys[0], 300, 300, seed=99)  # a 300-px image where a 256-px one belongs
    code, report = check(out, "clothing1m", capsys)
    assert code == 1 and f"FAULT: 1 packed images do not have the shorter side of 256 px (or the original's, where " \
                          f"smaller), e.g. {keys[0]} (shorter side 300 px, expected 256)" in report
    later = (out / keys[0]).stat().st_mtime + 10
    os.utime(src / keys[1], (later, later))  # an original changed after packing
    code, report = check(out, "clothing1m", capsys)
    assert code == 1 and f"FAULT: 1 packed images are older than their originals (changed since packing), e.g. " \
                          f"{keys[1]}" in report
    text = pack(src, out, "clothing1m", capsys)
    # the source that changed is packed again, and so is the damaged copy (its source decodes)
    assert "2 resized, 0 copied as they are, 33 already there; 1 written over copies older than their source; " \
           "1 written over damaged copies" in text
    photo(out / keys[0], 300, 300, seed=99)  # again a 300-px image where a 256-px one belongs
    shutil.move(src, tmp_path / "elsewhere")  # the original gone: the manifest alone still catches it
    code, report = check(out, "clothing1m", capsys)
    assert code == 1 and "the original at" in report and "is gone" in report
    assert "(shorter side 300 px, above 256)" in report
    code, report = check(out, "clothing1m", capsys, "--original", str(tmp_path / "elsewhere"))
    assert code == 1 and f"compared with the original at {tmp_path / 'elsewhere'}" in report
    code, _, err = bench(["data", "check", "--dataset", "clothing1m", "--data-root", str(out), "--original",
                          str(src)], capsys)
    assert "--original" in one_line_error(code, err) and "no such folder" in err


def test_packing_resumes_and_a_finished_copy_is_left_alone(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    keys = photo_clothing1m(src)
    pack(src, out, "clothing1m", capsys, "--jobs", "2")
    before = files_of(out)
    gone = [keys[0], keys[1]]  # two resized images
    for key in gone:
        (out / key).unlink()
    (out / MANIFEST).unlink()  # an interrupted pack: no manifest yet
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that has ended: the temporary file of a pack killed mid-write
    stale = (out / keys[5]).parent / f".{Path(keys[5]).name}.{dead.pid}.0123abcd.tmp"
    stale.write_bytes(b"half an image")
    code, report = check(out, "clothing1m", capsys)
    assert code == 1 and "FAULT: an unfinished packed copy" in report
    text = pack(src, out, "clothing1m", capsys, "--jobs", "2")
    assert "2 resized, 0 copied as they are, 33 already there" in text and "list files: 7" in text
    assert "removed 1 temporary files an interrupted pack left behind" in text and not stale.exists()
    after = files_of(out)
    assert sorted(after) == sorted(before)
    for path, (size, mtime) in before.items():
        if path in gone:  # written again: the same bytes (the same decode, resize and encode)
            assert after[path][0] == size
        elif path != MANIFEST:
            assert after[path] == (size, mtime), path  # untouched
    text = pack(src, out, "clothing1m", capsys)  # everything is done: nothing is written
    assert "0 resized, 0 copied as they are, 35 already there" in text and "manifest unchanged" in text
    assert files_of(out) == after
    assert not list(out.rglob("*.tmp"))
    code, _, err = bench(["data", "pack", "--dataset", "clothing1m", "--data-root", str(src), "--out", str(out),
                          "--short-side", "128"], capsys)
    assert code == 2 and "holds a packed copy made with other options" in err and files_of(out) == after


def test_undecodable_and_missing_images_are_reported_not_fatal(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    keys = photo_clothing1m(src)
    (src / keys[1]).write_bytes((src / keys[1]).read_bytes()[:600])  # truncated: header fine, decode fails
    (src / keys[2]).unlink()
    text = pack(src, out, "clothing1m", capsys)
    assert f"warning: 1 images cannot be decoded, e.g. {src / keys[1]}: copied unchanged" in text
    assert f"warning: 1 listed images are missing in the source, e.g. {src / keys[2]}" in text
    assert (out / keys[1]).read_bytes() == (src / keys[1]).read_bytes()
    code, report = check(out, "clothing1m", capsys)  # the same faults as the original's, no others
    assert code == 1 and "2 fault(s) found" in report
    assert f"1 train image files cannot be decoded, e.g. {out / keys[1]}" in report
    assert f"1 train image files are missing, e.g. {out / keys[2]}" in report
    text = pack(src, out, "clothing1m", capsys)  # a rerun finds the same
    assert "1 undecodable, 1 missing in the source" in text and "manifest unchanged" in text


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case,expected", [
    ("unknown", "unknown data set 'nosuch'"),
    ("in-memory", "data set cifar10 is held in memory"),
    ("same", "is the --data-root itself"),
    ("inside", "is inside --data-root"),
    ("short-side", "--short-side 0: must be at least 1"),
    ("missing-root", "no such folder"),
    ("not-empty", "is not empty and holds no packed copy"),
    ("outside", "listed files are outside --data-root"),
])
def test_bad_input_is_one_line_and_exit_2(case, expected, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    make_clothing1m(src)
    name, extra = "clothing1m", []
    if case == "unknown":
        name = "nosuch"
    elif case == "in-memory":
        name = "cifar10"
    elif case == "same":
        out = src
    elif case == "inside":
        out = src / "packed"
    elif case == "short-side":
        extra = ["--short-side", "0"]
    elif case == "missing-root":
        shutil.rmtree(src)
    elif case == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "outside":
        photo(tmp_path / "elsewhere" / "x.jpg", 40, 40, seed=1)
        kv = src / "annotations" / "noisy_label_kv.txt"
        kv.write_text(kv.read_text() + "../elsewhere/x.jpg 3\n")
        keys = src / "annotations" / "noisy_train_key_list.txt"
        keys.write_text(keys.read_text() + "../elsewhere/x.jpg\n")
    before = files_of(tmp_path)
    code, _, err = bench(["data", "pack", "--dataset", name, "--data-root", str(src), "--out", str(out), *extra],
                         capsys)
    assert expected in one_line_error(code, err)
    assert files_of(tmp_path) == before  # nothing written


def loader_transforms():
    """The on-disk loader's per-view transforms (PIL image -> uint8 tensor): bench/training/disk.py,
    or data.py before the on-disk loader moved there."""
    try:
        from bench.training.disk import file_transforms
    except ImportError:
        from bench.training.data import file_transforms
    return file_transforms


def test_a_training_batch_from_the_copy_differs_only_by_jpeg_reencoding(tmp_path, capsys):
    """The loader's own transforms, each sample's draws seeded alike (as the loader seeds them
    from the pass's seed and the dataset index): the centre-cropped evaluation view and the
    randomly cropped and flipped training view of the packed copy differ from the original's
    only by the JPEG re-encoding."""
    import torch

    src, out = tmp_path / "src", tmp_path / "packed"
    keys = photo_clothing1m(src)
    pack(src, out, "clothing1m", capsys)
    ds = dataset("clothing1m")
    transforms = loader_transforms()(ds.image_size, ds.resize, "crop-flip")
    batches = []
    for root in (src, out):
        raw = ds.load(str(root))
        files = raw.train_images[:12]  # the photo-sized ones
        assert [os.path.relpath(f, root) for f in files] == keys[:12]
        batch = {"plain": [], "train": []}
        for i, f in enumerate(files):
            with Image.open(f) as im, torch.random.fork_rng(devices=[]):
                torch.manual_seed(1234 + i * 1_000_003)
                rgb = im.convert("RGB")
                for view in batch:
                    batch[view].append(transforms[view](rgb))
        batches.append({view: torch.stack(images).float() for view, images in batch.items()})
    a, b = batches
    for view in ("plain", "train"):  # the centre crop, and the random crop + flip drawn alike
        assert a[view].shape == b[view].shape == (12, 3, 224, 224)
        diff = (a[view] - b[view]).abs().mean().item()
        assert 0 < diff < REENCODE_BOUND, (view, diff)
    copied = [i for i in range(12) if i % 4 in (2, 3)]  # 256x300 and 200x150: copied as they are
    assert torch.equal(a["plain"][copied], b["plain"][copied]) and torch.equal(a["train"][copied], b["train"][copied])


def test_options_file_records_how_the_copy_is_made(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "packed"
    make_tiny_imagenet(src)
    pack(src, out, "tiny-imagenet", capsys, "--short-side", "32", "--quality", "80", "--jobs", "1")
    import json

    made = json.loads((out / OPTIONS_FILE).read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    assert made["short_side"] == manifest["short_side"] == 32 and manifest["quality"] == 80
    assert manifest["source"] == str(src) and manifest["splits"]["train"]["count"] == 8
    assert manifest["splits"]["test"]["count"] == 8 and "wnids.txt" in manifest["list_files"]


def test_pool_workers_start_clean_of_this_process_signal_handlers():
    """A worker forked from a process whose SIGTERM runs Python code (as `bench run`'s does) would
    not end when the pool terminates it while stuck in C code: the pool's workers start clean."""
    import signal

    from bench.common.cores import process_pool

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with process_pool(1) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)

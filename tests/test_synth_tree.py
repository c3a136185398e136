"""``bench data synth`` (:mod:`datasets.synth`): every layout's tree loads with the project's own
loader with the right counts and labels and passes ``data check``; the same arguments give the
same bytes whatever ``--jobs``; an interrupted tree is completed by a rerun; bad input is one
line and exit code 2; and the images are photo-sized JPEGs whose classes a nearest-class-mean
classifier on 16 x 16 pixels tells apart far above chance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import datasets  # noqa: F401  (registers the data sets)
from bench.cli import main
from bench.common.options import build_options
from datasets.base import DATASETS
from datasets.check import check_dataset
from datasets.synth import LAYOUTS, encode_jpeg, make_image, make_spec, noisy_labels, side_count

SMALL = "48x40"
NOISY_LAYOUTS = ("clothing1m", "webvision", "food101n", "animal10n")


def synth(capsys: pytest.CaptureFixture[str], out: Path, layout: str, n: int, *extra: str) -> tuple[int, str, str]:
    """``bench data synth`` in-process: (exit code, stdout, stderr)."""
    code = main(["data", "synth", "--layout", layout, "--out", str(out), "--n", str(n), *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_loads_with_its_loader(layout, tmp_path, capsys):
    k = LAYOUTS[layout].classes
    n = k + 30
    code, out, _ = synth(capsys, tmp_path, layout, n, "--size", SMALL, "--jobs", "1")
    assert code == 0 and f"{n:,} training images of 48x40, {k} classes" in out
    cls = DATASETS.get(layout)
    ds = cls(build_options(cls, {}, "data set"))
    raw = ds.load(str(tmp_path))
    assert ds.num_classes == k
    m = side_count(make_spec(layout, n))
    assert len(raw.train_labels) == n and len(raw.test_labels) == m
    # every loaded file's label is the one planned for it: the given (noisy) label in training,
    # the clean class in the test sets
    spec = make_spec(layout, n, SMALL)
    plan = {str(tmp_path / it.rel): it for it in LAYOUTS[layout].plan(spec).items}
    clean = np.arange(n) % k
    given = noisy_labels(clean, spec.noise_rate, k, spec.seed)
    assert [given[plan[f].index] for f in raw.train_images] == raw.train_labels.tolist()
    for _, files, labels in raw.splits()[1:]:
        assert [plan[f].label for f in files] == labels.tolist()
    assert np.sum(given != clean) == round(spec.noise_rate * n)
    assert (spec.noise_rate > 0) == (layout in NOISY_LAYOUTS)
    if layout == "webvision":
        assert len(raw.extra_tests["imagenet"][1]) == m
    lines, faults = check_dataset(ds, str(tmp_path))
    assert faults == 0 and lines[-1] == "no faults found", lines


def test_fewer_classes_where_the_loader_reads_them_from_the_lists(tmp_path, capsys):
    for layout in ("folder", "food101n", "tiny-imagenet"):
        assert synth(capsys, tmp_path / layout, layout, 12, "--classes", "3", "--size", SMALL)[0] == 0
        ds = DATASETS.get(layout)()
        raw = ds.load(str(tmp_path / layout))
        assert ds.num_classes == 3 and np.bincount(raw.test_labels).tolist() == [1, 1, 1]


def test_same_bytes_whatever_jobs(tmp_path, capsys):
    args = ("--size", "40x32", "--seed", "7", "--classes", "4")
    assert synth(capsys, tmp_path / "a", "folder", 60, *args, "--jobs", "1")[0] == 0
    assert synth(capsys, tmp_path / "b", "folder", 60, *args, "--jobs", "2")[0] == 0
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(a) == 60 + 6 + 1 and a == b  # images, the manifest
    assert synth(capsys, tmp_path / "c", "folder", 60, "--size", "40x32", "--seed", "8", "--classes", "4")[0] == 0
    assert tree_bytes(tmp_path / "c")["train/class_0/000000.jpg"] != a["train/class_0/000000.jpg"]


def test_rerun_completes_an_interrupted_tree(tmp_path, capsys):
    args = ("--size", SMALL, "--jobs", "2")
    assert synth(capsys, tmp_path, "clothing1m", 40, *args)[0] == 0
    before = tree_bytes(tmp_path)
    images = sorted((tmp_path / "images").rglob("*.jpg"))
    for victim in images[::5]:
        victim.unlink()
    (tmp_path / "noisy_label_kv.txt").unlink()
    images[0].with_name(f".{images[0].name}.part").write_bytes(b"half a jpeg")  # what a kill mid-write leaves
    code, out, _ = synth(capsys, tmp_path, "clothing1m", 40, *args)
    assert code == 0 and f"({len(images[::5])} written, {len(images) - len(images[::5])} already there)" in out
    assert tree_bytes(tmp_path) == before  # the half-written file was replaced, not left beside


def one_error_line(code: int, err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), err
    return lines[0]


@pytest.mark.parametrize("layout, n, extra, says", [
    ("cifar10", 10, (), "--layout cifar10: unknown; valid: clothing1m"),
    ("clothing1m", 13, (), "--n 13: fewer training images than the 14 classes"),
    ("folder", 10, ("--size", "500"), "--size 500: expected WIDTHxHEIGHT"),
    ("folder", 10, ("--size", "0x10"), "each side must be in [8, 4096]"),
    ("folder", 10, ("--size", "axb"), "expected WIDTHxHEIGHT"),
    ("clothing1m", 100, ("--classes", "5"), "the clothing1m loader knows exactly 14 classes"),
    ("folder", 10, ("--classes", "1"), "--classes 1: at least 2"),
    ("folder", 10, ("--quality", "0"), "--quality 0: a JPEG quality in [1, 100]"),
    ("folder", 10, ("--noise-rate", "0.2"), "folder ships clean labels"),
    ("animal10n", 10, ("--noise-rate", "1.5"), "must be in [0, 1)"),
    ("folder", 10, ("--jobs", "0"), "--jobs 0: at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(layout, n, extra, says, tmp_path, capsys):
    code, _, err = synth(capsys, tmp_path / "out", layout, n, *extra)
    assert says in one_error_line(code, err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_out_that_is_not_a_tree_of_the_same_arguments_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = synth(capsys, tmp_path / "file", "folder", 10)
    assert "exists and is not a folder" in one_error_line(code, err)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = synth(capsys, tmp_path / "busy", "folder", 10)
    assert "not empty and holds no synth.json" in one_error_line(code, err)
    assert synth(capsys, tmp_path / "tree", "folder", 10, "--size", SMALL)[0] == 0
    code, _, err = synth(capsys, tmp_path / "tree", "folder", 10, "--size", SMALL, "--seed", "1")
    assert "written with other arguments" in one_error_line(code, err)


def test_photo_sized_jpegs_are_photo_heavy():
    """500 x 400 at quality 90: tens of KB like web photos, not a flat image's few KB."""
    sizes = [len(encode_jpeg(make_image(0, "train", i, i % 14, 500, 400), 90)) for i in range(8)]
    assert 50_000 < np.mean(sizes) < 110_000, sizes


def test_classes_are_learnable_from_16px_pixels():
    """A nearest-class-mean classifier on 16 x 16 downsampled pixels, 300 training images of 10
    classes, tested on 200 others: chance is 10%."""
    from PIL import Image

    def features(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 10
        small = [Image.fromarray(make_image(0, split, i, int(y), 48, 48)).resize((16, 16), Image.BILINEAR)
                 for i, y in enumerate(labels)]
        return np.stack([np.asarray(s, np.float32).ravel() for s in small]), labels

    x, y = features("train", 300)
    x_test, y_test = features("test", 200)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    predicted = ((x_test[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert np.mean(predicted == y_test) > 0.6

"""The `synthetic` data set (datasets/synthetic.py): the same options give the same bytes, the
options shape the data, bad options fail in one line, noise applies, and a small CNN learns it
through the whole run path (per-instance classes, channels, size and pixel statistics)."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

import datasets  # noqa: F401  (registers the data sets)
from bench.cli import main
from bench.common.options import build_options
from datasets.base import DATASETS, make_train_set
from datasets.noise import NoiseSpec
from tests.helpers import run_cli

SMALL = {"train_size": "200", "test_size": "50"}


def synthetic(**opts: str):
    cls = DATASETS.get("synthetic")
    return cls(build_options(cls, {k: str(v) for k, v in opts.items()}, "data set"))


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_same_options_give_the_same_bytes_and_seeds_differ():
    a, b = synthetic(**SMALL).load(None), synthetic(**SMALL).load(None)
    for x, y in zip(a.splits(), b.splits(), strict=True):
        assert np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2])
    other = synthetic(**SMALL, seed="1").load(None)
    assert not np.array_equal(a.train_images, other.train_images)
    assert not np.array_equal(a.test_images, other.test_images)
    assert not np.array_equal(a.train_images[:50], a.test_images)  # train and test: separate streams


def test_the_bytes_do_not_depend_on_the_thread_count():
    from datasets.synthetic import _split

    templates = np.random.default_rng(0).random((4, 3, 4, 4), dtype=np.float32)
    one = _split(templates, 700, 64, np.random.SeedSequence(7), workers=1)  # 3 chunks at 64 px
    two = _split(templates, 700, 64, np.random.SeedSequence(7), workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_options_shape_the_data_and_the_instance():
    ds = synthetic(train_size="120", test_size="30", classes="6", channels="1", image_size="20", seed="3")
    raw = ds.load(None)
    assert raw.train_images.shape == (120, 1, 20, 20) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (30, 1, 20, 20)
    assert np.bincount(raw.train_labels).tolist() == [20] * 6  # balanced
    assert np.bincount(raw.test_labels).tolist() == [5] * 6
    assert ds.num_classes == 6 and ds.channels == 1 and ds.image_size == 20
    pixels = raw.train_images / 255.0  # mean/std are measured on the training images
    assert ds.mean == pytest.approx((pixels.mean(),), abs=1e-5)
    assert ds.std == pytest.approx((pixels.std(),), abs=1e-5)
    cls = DATASETS.get("synthetic")  # the class keeps the defaults' shapes (listings read them)
    assert (cls.channels, cls.image_size, len(cls.classes)) == (3, 32, 10)
    assert ds.resolved_options() == {"train_size": 120, "test_size": 30, "classes": 6, "image_size": 20,
                                     "channels": 1, "seed": 3}


def test_defaults_are_cifar_shaped():
    ds = synthetic()
    assert (ds.num_classes, ds.channels, ds.image_size, ds.opts.train_size, ds.opts.test_size) == (10, 3, 32,
                                                                                                   50_000, 10_000)
    assert not ds.on_disk and not ds.real_noise and ds.asym_map is None


@pytest.mark.parametrize("sets, fragment", [
    (["train_size=0"], "train_size=0"),
    (["test_size=-5"], "test_size=-5"),
    (["classes=1"], "at least 2"),
    (["channels=2"], "valid values are 1, 3"),
    (["image_size=4"], "[8, 512]"),
    (["image_size=100000"], "[8, 512]"),
    (["test_size=5"], "at least classes=10"),
    (["train_size=2000000", "image_size=512"], "GiB"),
    (["seed=-1"], "seed=-1"),
    (["classes=ten"], "expected int"),
])
def test_bad_options_fail_in_one_line(sets, fragment, tmp_path, capsys):
    argv = ["run", "--method", "ce", "--dataset", "synthetic", "--out", str(tmp_path / "out"),
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    for s in sets:
        argv += ["--set", s]
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("bench: error: ") and "Traceback" not in err, err
    assert fragment in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()


def test_asym_noise_is_refused(tmp_path, capsys):
    code, _, err = cli(["run", "--method", "ce", "--dataset", "synthetic", "--noise", "asym", "--noise-rate", "0.2",
                        "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capsys)
    assert code == 2 and "no semantic class map" in err and len(err.splitlines()) == 1


def test_sym_noise_applies(tmp_path):
    ds = synthetic(train_size="2000", test_size="100")
    train, report = make_train_set(ds, ds.load(None), NoiseSpec("sym", 0.4, 1), None, tmp_path)
    assert report.rate_realized == pytest.approx(0.4, abs=0.03)
    assert np.mean(train.given != train.clean) == report.rate_realized


def test_listed_and_checked(capsys):
    code, out, _ = cli(["list", "datasets"], capsys)
    assert code == 0 and any(line.split()[:1] == ["synthetic"] for line in out.splitlines())
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # no --data-root: nothing is read from disk
        code = main(["data", "check", "--dataset", "synthetic", "--set", "train_size=100", "--set", "test_size=20"])
    out = buf.getvalue()
    assert code == 0 and "no faults found" in out and "train: 100 samples" in out and "test: 20 samples" in out


@pytest.mark.slow
def test_a_small_cnn_learns_it_and_grey_images_run(tmp_path: Path):
    """CE with the small CNN, 2,000 images, 3 epochs (crop + flip, the default): observed
    0.886-0.942 test accuracy over data seeds 0-4 and training seeds 1-3; 0.8 is well under."""
    summary = run_cli(tmp_path, "--method", "ce", "--dataset", "synthetic", "--backbone", "smallcnn", "--epochs", "3",
                      "--set", "train_size=2000", "--set", "test_size=500")
    assert summary["status"] == "finished" and summary["last_test_acc"] >= 0.8
    grey = run_cli(tmp_path, "--method", "ce", "--dataset", "synthetic", "--backbone", "smallcnn", "--epochs", "1",
                   "--set", "train_size=200", "--set", "test_size=50", "--set", "channels=1", "--set", "image_size=28")
    assert grey["status"] == "finished"


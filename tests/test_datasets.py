"""The benchmark loaders on miniature copies of their real layouts (tests/fixtures_data.py):
counts, labels, classes and indices; label-set options; layout errors; `data check` on planted
faults; a damaged image skipped and counted during a run; Clothing1M's class-balanced epochs."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets  # noqa: F401  (registers the data sets)
from bench.cli import main
from bench.common.errors import UsageError
from bench.common.options import build_options
from datasets.base import DATASETS
from tests.fixtures_data import MAKERS, make_cifar10n, make_cifar100, make_cifar100n, make_clothing1m
from tests.helpers import make_trainer, metric_curve, run_cli


def dataset(name: str, **opts: str):
    cls = DATASETS.get(name)
    return cls(build_options(cls, opts, "data set"))


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_loader_reads_its_fixture(name, tmp_path):
    made = MAKERS[name](tmp_path)
    ds = dataset(name)
    raw = ds.load(str(tmp_path))
    assert len(raw.train_images) == len(raw.train_labels)
    assert len(raw.test_images) == len(raw.test_labels) == len(made.test_labels)
    assert np.array_equal(raw.test_labels, made.test_labels)
    if name in ("cifar10n", "cifar100n"):  # default label sets: the papers' worse / noisy
        assert np.array_equal(raw.train_labels, made.extra["worse" if name == "cifar10n" else "noisy"])
        assert np.array_equal(raw.train_clean, made.train_labels)
    else:
        assert np.array_equal(raw.train_labels, made.train_labels)
    assert ds.num_classes == made.num_classes
    if ds.on_disk:  # paths of existing files, in the order of the labels
        assert all(Path(f).is_file() for f in raw.train_images)
    else:
        assert raw.train_images.shape == (len(raw.train_labels), 3, 32, 32) and raw.train_images.dtype == np.uint8


def test_cifar_images_are_the_pickled_rows(tmp_path):
    import pickle

    make_cifar100(tmp_path)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        rows = pickle.load(f, encoding="latin1")["data"]
    raw = dataset("cifar100").load(str(tmp_path / "cifar-100-python"))  # the folder itself works too
    assert np.array_equal(raw.train_images[7], rows[7].reshape(3, 32, 32))  # channel-major rows


def test_cifar100_asym_map_follows_the_coarse_labels(tmp_path):
    made = make_cifar100(tmp_path)
    ds = dataset("cifar100")
    ds.load(str(tmp_path))
    coarse = made.extra["coarse_of"]
    assert sorted(ds.asym_map) == list(range(100))
    for f, g in ds.asym_map.items():
        assert f != g and coarse[f] == coarse[g]  # the next class of the same superclass
    f = 0  # each superclass is one 5-cycle
    cycle = [f]
    for _ in range(4):
        cycle.append(ds.asym_map[cycle[-1]])
    assert ds.asym_map[cycle[-1]] == f and len(set(cycle)) == 5


@pytest.mark.parametrize("label,key", [("aggre", "aggre_label"), ("random2", "random_label2")])
def test_cifar10n_label_sets(label, key, tmp_path):
    import torch as th

    make_cifar10n(tmp_path)
    raw = dataset("cifar10n", label=label).load(str(tmp_path))
    assert np.array_equal(raw.train_labels, th.load(tmp_path / "CIFAR-10_human.pt", weights_only=False)[key])


def test_cifar100n_coarse_labels_have_20_classes(tmp_path):
    made = make_cifar100n(tmp_path)
    ds = dataset("cifar100n", label="noisy_coarse")
    raw = ds.load(str(tmp_path))
    coarse = made.extra["coarse_of"]
    assert ds.num_classes == 20
    assert np.array_equal(raw.train_labels, coarse[made.extra["noisy"]])
    assert np.array_equal(raw.test_labels, coarse[made.test_labels])


def test_cifar_n_file_is_loaded_without_running_code(tmp_path):
    """A label file carrying a pickled call is refused, not executed."""
    make_cifar10n(tmp_path)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"clean_label": Evil()}, tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(UsageError, match="not a CIFAR-N label file"):
        dataset("cifar10n").load(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_clothing1m_lists_at_the_root_work_too(tmp_path):
    made = make_clothing1m(tmp_path, annotations=False)
    raw = dataset("clothing1m").load(str(tmp_path))
    assert np.array_equal(raw.train_labels, made.train_labels) and raw.train_clean is None


@pytest.mark.parametrize("name,remove,expected", [
    ("clothing1m", "annotations/noisy_train_key_list.txt", "noisy_train_key_list.txt"),
    ("cifar10", "cifar-10-batches-py/data_batch_3", "data_batch_3"),
    ("tiny-imagenet", "val/val_annotations.txt", "val_annotations.txt"),
    ("webvision", "info/val_filelist.txt", "val_filelist.txt"),
    ("food101n", "food-101", "food-101"),
    ("animal10n", "testing", "testing"),
    ("cifar10n", "CIFAR-10_human.pt", "CIFAR-10_human.pt"),
])
def test_missing_layout_parts_name_the_expected_path(name, remove, expected, tmp_path, capsys):
    import shutil

    MAKERS[name](tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    code = main(["data", "check", "--dataset", name, "--data-root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("bench: error:") and expected in err and "\n" not in err


def test_run_without_data_root_says_so(capsys):
    code = main(["run", "--method", "ce", "--dataset", "clothing1m"])
    err = capsys.readouterr().err
    assert code == 2 and "--data-root" in err


def check(tmp_path: Path, name: str) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["data", "check", "--dataset", name, "--data-root", str(tmp_path)])
    return code, buf.getvalue()


def test_data_check_reports_counts_and_noise_rate(tmp_path):
    made = make_cifar10n(tmp_path)
    code, out = check(tmp_path, "cifar10n")
    assert code == 0 and "no faults found" in out
    assert "train: 30 samples (the real data set: 50,000)" in out
    rate = np.mean(made.extra["worse"] != made.train_labels)
    assert f"realised noise rate of the given training labels against the clean ones: {rate:.4f}" in out


def test_data_check_reports_planted_faults(tmp_path):
    make_clothing1m(tmp_path)
    lists = tmp_path / "annotations"
    keys = (lists / "noisy_train_key_list.txt").read_text().split()
    (tmp_path / keys[3]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    (tmp_path / keys[5]).unlink()  # missing
    lines = (lists / "noisy_label_kv.txt").read_text().splitlines()
    lines[7] = f"{keys[7]} 14"  # out of range: 14 classes are 0..13
    (lists / "noisy_label_kv.txt").write_text("\n".join(lines) + "\n")
    code, out = check(tmp_path, "clothing1m")
    assert code == 1
    assert f"1 train image files are missing, e.g. {tmp_path / keys[5]}" in out
    assert f"1 train image files cannot be decoded, e.g. {tmp_path / keys[3]}" in out
    assert "1 train labels outside [0, 13] (first: sample 7, label 14)" in out
    assert "3 fault(s) found" in out
    with pytest.raises(UsageError, match="labels outside"):  # a run refuses what data check reports
        dataset("clothing1m").load(str(tmp_path))


@pytest.mark.slow
def test_a_damaged_image_is_skipped_and_counted_in_a_run(tmp_path):
    from tests.fixtures_data import make_animal10n

    make_animal10n(tmp_path / "data")
    victim = sorted((tmp_path / "data" / "training").iterdir())[2]
    victim.write_bytes(b"\xff\xd8 broken")
    s = run_cli(tmp_path, "--method", "ce", "--dataset", "animal10n", "--data-root", str(tmp_path / "data"),
                "--backbone", "timm:test_resnet", "--image-size", "32", "--epochs", "2", "--batch-size", "4",
                "--workers", "0")
    assert s["status"] == "finished"
    assert metric_curve(tmp_path, s["run_id"], "skipped_images") == [1.0, 1.0]  # once per epoch


def test_clothing1m_epochs_are_fresh_class_balanced_samples(tmp_path):
    make_clothing1m(tmp_path / "data")
    t = make_trainer(tmp_path, method="ce", dataset="clothing1m", data_root=str(tmp_path / "data"),
                     backbone="timm:test_resnet", image_size=32, batch_size=4, workers=0,
                     dataset_options={"samples_per_epoch": 14})
    pools = [t.draw_pool(e) for e in range(3)]
    labels = t.train_loader.labels
    for p in pools:
        assert len(p) == 14 and torch.equal(torch.bincount(labels[p], minlength=14), torch.ones(14, dtype=torch.long))
    assert not torch.equal(pools[0], pools[1])  # fresh each epoch
    assert torch.equal(pools[1], t.draw_pool(1))  # a function of (seed, epoch): resume draws the same
    default = dataset("clothing1m")
    assert default.epoch_samples(64) == 64_000  # 1000 batches (DivideMix num_batches)


def test_an_epoch_visits_only_its_pool(tmp_path):
    make_clothing1m(tmp_path / "data")
    t = make_trainer(tmp_path, method="ce", dataset="clothing1m", data_root=str(tmp_path / "data"),
                     backbone="timm:test_resnet", image_size=32, batch_size=4, workers=0,
                     dataset_options={"samples_per_epoch": 14})
    seen = []
    original = t.method.train_step

    def spy(batch, epoch, phase):
        seen.append(batch["index"].clone())
        return original(batch, epoch, phase)

    t.method.train_step = spy
    t.pool = t.draw_pool(0)
    t.train_epoch(0)
    assert torch.equal(torch.sort(torch.cat(seen)).values, t.pool)


@pytest.mark.slow
def test_webvision_logs_the_imagenet_test_set(tmp_path):
    from tests.fixtures_data import make_webvision

    make_webvision(tmp_path / "data")
    s = run_cli(tmp_path, "--method", "ce", "--dataset", "webvision", "--data-root", str(tmp_path / "data"),
                "--backbone", "timm:test_resnet", "--no-pretrained", "--image-size", "32", "--epochs", "1",
                "--workers", "0")
    acc = metric_curve(tmp_path, s["run_id"], "test_acc_imagenet")
    assert len(acc) == 1 and acc[0] in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 ImageNet val images


def test_instance_noise_on_an_on_disk_data_set(tmp_path):
    from tests.fixtures_data import make_tiny_imagenet

    make_tiny_imagenet(tmp_path / "data", per_class=10)
    t = make_trainer(tmp_path, method="ce", dataset="tiny-imagenet", data_root=str(tmp_path / "data"),
                     backbone="timm:test_resnet", noise="instance", noise_rate=0.4, workers=0)
    assert t.noise.rate_realized is not None and 0 < t.noise.rate_realized < 1


def test_folder_with_a_labels_file_is_real_noise_with_clean_labels(tmp_path):
    from tests.fixtures_data import make_folder

    made = make_folder(tmp_path, with_labels=True)
    ds = dataset("folder", labels=str(tmp_path / "labels.txt"))
    raw = ds.load(str(tmp_path))
    assert ds.classes == ("cat", "dog", "fox") and ds.real_noise
    assert np.array_equal(raw.train_labels, made.train_labels)
    assert np.array_equal(raw.train_clean, made.train_clean)
    assert not dataset("folder").real_noise  # without the file, synthetic noise applies


def _nest(root: Path, level: str) -> None:
    """Move every class folder of train/ and test/ one level deeper, under ``level``."""
    for split in ("train", "test"):
        inner = root / split / level
        inner.mkdir()
        for d in list((root / split).iterdir()):
            if d != inner:
                d.rename(inner / d.name)


def test_folder_one_level_too_deep_is_refused_alike_by_run_and_data_check(tmp_path, capsys):
    from tests.fixtures_data import make_folder

    make_folder(tmp_path)
    _nest(tmp_path, "images")
    code = main(["data", "check", "--dataset", "folder", "--data-root", str(tmp_path)])
    check_err = capsys.readouterr().err.strip()
    assert code == 2 and "only the folder 'images'" in check_err and "one level deeper" in check_err
    code = main(["run", "--method", "ce", "--dataset", "folder", "--data-root", str(tmp_path), "--epochs", "1"])
    assert code == 2 and capsys.readouterr().err.strip() == check_err


def test_folder_searches_class_subfolders_like_imagefolder(tmp_path):
    from tests.fixtures_data import _jpeg, make_folder

    made = make_folder(tmp_path)
    _jpeg(tmp_path / "train" / "dog" / "more" / "deep" / "x.jpg", 99)
    raw = dataset("folder").load(str(tmp_path))
    assert len(raw.train_labels) == len(made.train_labels) + 1
    assert raw.train_labels[list(raw.train_images).index(str(tmp_path / "train/dog/more/deep/x.jpg"))] == 1


def test_folder_test_class_unknown_to_train_is_an_error_naming_it(tmp_path):
    from tests.fixtures_data import _jpeg, make_folder

    make_folder(tmp_path)
    _jpeg(tmp_path / "test" / "wolf" / "0.jpg", 5)
    with pytest.raises(UsageError, match="class folders that .* lacks: wolf; the classes are those of train/: "
                                         "cat, dog, fox"):
        dataset("folder").load(str(tmp_path))


def test_data_check_fails_on_an_empty_split(tmp_path):
    from tests.fixtures_data import make_folder

    make_folder(tmp_path)
    for f in (tmp_path / "test").rglob("*.jpg"):
        f.unlink()
    code, out = check(tmp_path, "folder")
    assert code == 1 and "FAULT: the test split is empty" in out and "1 fault(s) found" in out
    with pytest.raises(UsageError, match="the test split is empty"):  # and a run refuses it alike
        dataset("folder").load(str(tmp_path))


def test_instance_features_of_image_files_are_small_and_streamed(tmp_path):
    """Features are decoded at 32 px whatever the data set's crop (224 for `folder`), so their
    memory is N x 3072 floats; centred in place (zero mean per pixel)."""
    from datasets.base import INSTANCE_SIDE, instance_features
    from tests.fixtures_data import make_folder

    make_folder(tmp_path)
    ds = dataset("folder")
    raw = ds.load(str(tmp_path))
    feats = instance_features(ds, raw.train_images)
    assert feats.shape == (len(raw.train_labels), INSTANCE_SIDE * INSTANCE_SIDE * 3) and feats.dtype == np.float32
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-3)
    assert np.abs(feats).max() > 1  # pixels, not zeros


def test_cifar_n_labels_in_another_order_than_the_images_fail(tmp_path):
    import torch as th

    made = make_cifar10n(tmp_path)
    labels = th.load(tmp_path / "CIFAR-10_human.pt", weights_only=False)
    labels["clean_label"] = np.roll(made.train_labels, 1)
    th.save(labels, tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(UsageError, match="not in the python version's order"):
        dataset("cifar10n").load(str(tmp_path))


def test_webvision_imagenet_folders_by_synset_are_noted_not_tested(tmp_path):
    from tests.fixtures_data import make_webvision

    make_webvision(tmp_path, imagenet=False)
    (tmp_path / "imagenet" / "val" / "n01440764").mkdir(parents=True)
    ds = dataset("webvision")
    raw = ds.load(str(tmp_path))
    assert raw.extra_tests == {}
    assert any("holds no images in class-index folders" in n for n in ds.notes(str(tmp_path)))


def test_test_accuracy_counts_only_decodable_images(tmp_path):
    from tests.fixtures_data import make_animal10n

    make_animal10n(tmp_path / "data")
    t = make_trainer(tmp_path, method="ce", dataset="animal10n", data_root=str(tmp_path / "data"),
                     backbone="timm:test_resnet", image_size=32, workers=0)
    Path(t.test_loader.files[0]).write_bytes(b"broken")
    t.method.predict = lambda x: torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()
    acc = t.evaluate()["test_acc"]
    labels = t.test_loader.labels[1:]
    assert acc == pytest.approx(float((labels == 0).float().mean()))  # over the 9 images that decode
    assert t.test_loader.skipped == 1


def test_too_small_an_epoch_sample_fails_in_one_line(tmp_path):
    make_clothing1m(tmp_path / "data")
    with pytest.raises(UsageError, match="smaller than the 14 classes"):
        make_trainer(tmp_path, method="ce", dataset="clothing1m", data_root=str(tmp_path / "data"),
                     backbone="timm:test_resnet", image_size=32, workers=0, dataset_options={"samples_per_epoch": 10})


@pytest.mark.slow
def test_wrongevent_with_sampled_epochs_fits_on_seen_samples_only(tmp_path):
    """Clothing1M-style epochs: the label wave compares samples predicted in both epochs and
    the mixture is fitted on samples trained on so far, not on never-seen zeros."""
    from tests.fixtures_data import make_clothing1m as make

    make(tmp_path / "data")
    s = run_cli(tmp_path, "--method", "wrongevent", "--dataset", "clothing1m", "--data-root", str(tmp_path / "data"),
                "--backbone", "timm:test_resnet", "--no-pretrained", "--image-size", "32", "--epochs", "4",
                "--workers", "0", "--batch-size", "7", "--set", "samples_per_epoch=14", "--set", "stage1_epochs=3")
    assert s["status"] == "finished"
    state = torch.load(Path(s["run_dir"]) / "checkpoint.pt", weights_only=False)["method"]["state"]
    assert 14 <= int(state["seen"].sum()) < 28  # 4 samples of 14 out of 28: some never drawn
    changes = metric_curve(tmp_path, s["run_id"], "prediction_change")
    assert len(changes) == 2 and all(0 <= c <= 28 for c in changes)  # scaled to the whole set

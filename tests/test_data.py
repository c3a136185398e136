"""Tests for the data layer: :mod:`bench.training.data` (augmentation, views, the in-memory loader,
the on-disk loader), :mod:`datasets.base` (noise file, subset, train set) and
:mod:`datasets.fashion_mnist` (the IDX reader on the real files)."""

from __future__ import annotations

import gzip
import struct
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from bench.common.errors import UsageError
from bench.training.data import (
    InMemoryLoader,
    ViewMaker,
    epoch_generator,
    make_view_maker,
    random_crop,
    random_flip,
)
from datasets import noise as noise_lib
from datasets.base import Dataset, RawSplits, make_train_set, stratified_subset
from datasets.fashion_mnist import FILES, FashionMNIST, read_idx

CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- augmentation ------------------------------------------------------------------------------------


def crop_offsets(x: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int]]:
    """For each sample, the (dy, dx) whose window of the zero-padded input equals the output
    exactly (brute force over every offset); fails if there is none."""
    h, w = x.shape[2:]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(padded[i, :, dy:dy + h, dx:dx + w], out[i])]
        assert found, f"sample {i} is no window of the padded input"
        offsets.append(found[0])
    return offsets


def test_random_crop_is_a_window_of_the_padded_input():
    x = torch.rand(6, 2, 5, 7) + 1  # no zeros inside, so a window with padding is unambiguous
    out = random_crop(x, 2, gen())
    assert out.shape == x.shape
    crop_offsets(x, out, 2)


def test_random_crop_offsets_vary_across_a_batch():
    x = torch.rand(64, 1, 6, 6) + 1
    pad = 2
    offsets = crop_offsets(x, random_crop(x, pad, gen(1)), pad)
    assert len(set(offsets)) >= 10  # of 25; ~23 expected
    assert {dy for dy, _ in offsets} == set(range(2 * pad + 1))
    assert {dx for _, dx in offsets} == set(range(2 * pad + 1))


def test_random_crop_uint8_and_same_generator_same_crop():
    x = torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8)
    a, b = random_crop(x, 3, gen(5)), random_crop(x, 3, gen(5))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)


def test_random_flip_flips_about_half():
    x = torch.rand(64, 3, 5, 6)
    out = random_flip(x, gen(2))
    assert out.shape == x.shape
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(64)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(64)])
    assert (flipped ^ kept).all(), "every sample is either flipped or unchanged"
    assert 20 <= int(flipped.sum()) <= 44
    assert torch.equal(out[flipped], x[flipped].flip(3))


# --- views --------------------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_plain_view_is_normalised_exactly():
    vm = make_view_maker(MEAN, STD, CPU, "crop-flip", channels_last=False)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor([m * 255 for m in MEAN]).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in STD]).view(1, 3, 1, 1)
    out = vm(x, "plain", gen())
    assert out.dtype == torch.float32
    assert torch.equal(out, (x.float() - mean) / std)


def test_without_augmentation_shared_views_equal_plain_official_weak_still_augments():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    shared = make_view_maker(MEAN, STD, CPU, "none", channels_last=False)
    assert torch.equal(shared(x, "train", gen()), shared(x, "plain", gen()))
    # --views shared: the methods' own views start from --augment (here: none)
    assert torch.equal(shared(x, "weak", gen()), shared(x, "plain", gen()))
    # --views official: the published crop + flip whatever --augment says
    official = make_view_maker(MEAN, STD, CPU, "none", channels_last=False, policy="official")
    assert torch.equal(official(x, "train", gen()), official(x, "plain", gen()))
    assert not torch.equal(official(x, "weak", gen()), official(x, "plain", gen()))


def test_weak_view_crops_and_flips():
    vm = ViewMaker(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), augment="crop-flip", pad=2)
    x = torch.randint(1, 256, (64, 1, 6, 6), dtype=torch.uint8)
    out = vm(x, "train", gen(3))
    # each output is a window of the padded input, possibly mirrored
    plain_or_mirrored = torch.stack([out, out.flip(3)], 1)
    for i in range(64):
        assert any(
            torch.equal(torch.nn.functional.pad(x[i:i + 1].float(), (2, 2, 2, 2))[0, :, dy:dy + 6, dx:dx + 6], v)
            for v in plain_or_mirrored[i] for dy in range(5) for dx in range(5)
        )
    assert not torch.equal(out, x.float())


def test_channels_last_view():
    vm = make_view_maker(MEAN, STD, CPU, "crop-flip", channels_last=True)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = vm(x, "plain", gen())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    plain = make_view_maker(MEAN, STD, CPU, "crop-flip", channels_last=False)(x, "plain", gen())
    assert torch.equal(out, plain)


def test_unknown_view_raises():
    vm = make_view_maker(MEAN, STD, CPU, "crop-flip", channels_last=False)
    with pytest.raises(ValueError, match="valid: plain, train, weak, weak2, strong"):
        vm(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "extra-strong", gen())


# --- in-memory loader ---------------------------------------------------------------------------------

N_LOADER = 103  # not a multiple of the batch size: the last batch is short


@pytest.fixture
def loader() -> InMemoryLoader:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_LOADER, 1, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, N_LOADER)
    clean = rng.integers(0, 10, N_LOADER)
    views = make_view_maker((0.5,), (0.25,), CPU, "crop-flip", channels_last=False)
    return InMemoryLoader(images, labels, clean, views, batch_size=10, device=CPU)


def visited(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([b["index"] for b in batches])


def test_iterate_visits_every_index_once_with_matching_labels(loader):
    batches = list(loader.iterate(("plain", "weak"), epoch_generator(1, 0, CPU)))
    assert len(batches) == -(-len(loader) // loader.batch_size) == 11
    assert [len(b["index"]) for b in batches] == [10] * 10 + [3]
    idx = visited(batches)
    assert sorted(idx.tolist()) == list(range(N_LOADER))
    assert not torch.equal(idx, torch.arange(N_LOADER))  # shuffled
    for b in batches:
        assert set(b) == {"index", "label", "plain", "weak"}  # no clean labels: methods see batches
        assert torch.equal(b["label"], loader.labels[b["index"]])
        # the images are those of the indices, so per-sample state keyed by index is right
        assert torch.equal(b["plain"], loader.views(loader.images[b["index"]], "plain", gen()))
        assert b["weak"].shape == b["plain"].shape == (len(b["index"]), 1, 6, 6)
        assert b["label"].dtype == torch.int64


def test_iterate_order_is_a_function_of_seed_and_epoch(loader):
    def order(seed: int, epoch: int) -> torch.Tensor:
        return visited(list(loader.iterate(("weak",), epoch_generator(seed, epoch, CPU))))

    def weak(seed: int, epoch: int) -> torch.Tensor:
        return torch.cat([b["weak"] for b in loader.iterate(("weak",), epoch_generator(seed, epoch, CPU))])

    assert torch.equal(order(1, 0), order(1, 0))
    assert torch.equal(weak(1, 0), weak(1, 0))  # augmentation too
    assert not torch.equal(order(1, 0), order(1, 1))
    assert not torch.equal(order(1, 0), order(2, 0))


def test_iterate_without_shuffle_is_in_index_order(loader):
    idx = visited(list(loader.iterate(("plain",), shuffle=False, batch_size=25)))
    assert torch.equal(idx, torch.arange(N_LOADER))


def test_iterate_over_given_indices(loader):
    subset = torch.tensor([3, 17, 42, 43, 99, 0, 58])
    batches = list(loader.iterate(("plain",), epoch_generator(1, 0, CPU), indices=subset, batch_size=3))
    idx = visited(batches)
    assert sorted(idx.tolist()) == sorted(subset.tolist())
    assert [len(b["index"]) for b in batches] == [3, 3, 1]
    for b in batches:
        assert torch.equal(b["label"], loader.labels[b["index"]])


def test_batches_never_carry_clean_labels():
    views = make_view_maker((0.5,), (0.25,), CPU, "none", channels_last=False)
    ld = InMemoryLoader(np.zeros((5, 1, 4, 4), np.uint8), np.arange(5), None, views, 2, CPU)
    assert all("clean" not in b for b in ld.iterate(("plain",)))


# --- stratified subset --------------------------------------------------------------------------------

SUBSET_LABELS = np.repeat(np.arange(5), [500, 300, 120, 60, 20])  # 1000, unbalanced
np.random.default_rng(0).shuffle(SUBSET_LABELS)


@pytest.mark.parametrize("n", [1, 7, 100, 333, 999, 1000])
def test_stratified_subset_is_proportional(n):
    idx = stratified_subset(SUBSET_LABELS, n, seed=1)
    assert len(idx) == n
    assert len(np.unique(idx)) == n and np.all(np.diff(idx) > 0)  # sorted, distinct
    assert idx.min() >= 0 and idx.max() < len(SUBSET_LABELS)
    counts = np.bincount(SUBSET_LABELS[idx], minlength=5)
    share = np.bincount(SUBSET_LABELS, minlength=5) / len(SUBSET_LABELS) * n
    assert np.all(np.abs(counts - share) <= 1), (counts, share)


def test_stratified_subset_depends_on_the_seed_only():
    a = stratified_subset(SUBSET_LABELS, 100, seed=3)
    assert np.array_equal(a, stratified_subset(SUBSET_LABELS, 100, seed=3))
    assert not np.array_equal(a, stratified_subset(SUBSET_LABELS, 100, seed=4))


@pytest.mark.parametrize("n", [0, -1, 1001])
def test_stratified_subset_bad_size(n):
    with pytest.raises(UsageError, match=f"--subset {n}"):
        stratified_subset(SUBSET_LABELS, n, seed=1)


# --- make_train_set on a fake data set ----------------------------------------------------------------


class FakeData(Dataset):
    """A fake 10-class data set of random 8x8 grey images (never registered)."""

    name = "fake"
    classes = tuple(f"c{i}" for i in range(10))
    channels = 1
    image_size = 8
    mean = (0.5,)
    std = (0.25,)


class FakeRealNoise(FakeData):
    """A fake data set whose labels are already noisy."""

    name = "fake-real"
    real_noise: ClassVar[bool] = True


def fake_raw(seed: int = 0, n: int = 1000, with_clean: bool = False) -> RawSplits:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n // 10)
    rng.shuffle(labels)
    return RawSplits(
        train_images=rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
        train_labels=labels.astype(np.int64),
        test_images=rng.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 50),
        train_clean=labels.copy() if with_clean else None,
    )


SYM = noise_lib.NoiseSpec("sym", 0.4, 7)


def test_make_train_set_full_reports_the_realised_noise(tmp_path):
    raw = fake_raw()
    train, report = make_train_set(FakeData(), raw, SYM, None, tmp_path)
    assert len(train) == 1000
    assert np.array_equal(train.index, np.arange(1000))
    assert np.array_equal(train.source_index, np.arange(1000))
    assert np.array_equal(train.clean, raw.train_labels)
    assert train.images is not None and train.images.shape == (1000, 1, 8, 8)
    expected = noise_lib.apply_noise(raw.train_labels, 10, SYM)
    assert np.array_equal(train.given, expected)
    assert report.rate_realized == pytest.approx(0.4)  # sym flips exactly round(r N) labels
    assert report.rate_realized == np.mean(train.given != train.clean)
    assert report.transition.shape == (10, 10)
    assert np.allclose(report.transition.sum(1), 1)
    assert np.allclose(report.transition, noise_lib.transition_matrix(train.clean, train.given, 10))
    assert (report.model, report.rate, report.seed) == ("sym", 0.4, 7)


def test_make_train_set_takes_the_subset_after_the_noise(tmp_path):
    raw = fake_raw()
    full, _ = make_train_set(FakeData(), raw, SYM, None, tmp_path)
    train, report = make_train_set(FakeData(), raw, SYM, 200, tmp_path)
    assert len(train) == 200
    assert np.array_equal(train.index, np.arange(200))
    assert np.array_equal(train.source_index, stratified_subset(raw.train_labels, 200, SYM.seed))
    assert np.array_equal(train.given, full.given[train.source_index])
    assert np.array_equal(train.clean, raw.train_labels[train.source_index])
    assert np.array_equal(train.images, raw.train_images[train.source_index])
    assert np.array_equal(np.bincount(train.clean, minlength=10), np.full(10, 20))
    assert report.rate_realized == np.mean(train.given != train.clean)  # of the subset
    assert np.allclose(report.transition, noise_lib.transition_matrix(train.clean, train.given, 10))


def test_noise_file_is_saved_and_reused(tmp_path):
    raw = fake_raw()
    first, report = make_train_set(FakeData(), raw, SYM, None, tmp_path)
    path = report.labels_file
    assert path.parent == tmp_path and path.name.startswith("fake_sym_0.4_seed7_")
    assert np.array_equal(np.load(path), first.given)
    # Reuse, not a redraw that happens to agree: change the file and get the change back.
    tampered = first.given.copy()
    tampered[:5] = (tampered[:5] + 1) % 10
    np.save(path, tampered)
    second, again = make_train_set(FakeData(), raw, SYM, None, tmp_path)
    assert again.labels_file == path and np.array_equal(second.given, tampered)


def test_noise_file_is_redrawn_when_the_clean_labels_change(tmp_path):
    raw = fake_raw(seed=0)
    first, r1 = make_train_set(FakeData(), raw, SYM, None, tmp_path)
    other = fake_raw(seed=1)  # same size, other labels
    assert not np.array_equal(other.train_labels, raw.train_labels)
    train, r2 = make_train_set(FakeData(), other, SYM, None, tmp_path)
    assert np.array_equal(train.given, noise_lib.apply_noise(other.train_labels, 10, SYM))
    assert r2.labels_file != r1.labels_file  # both files stand: neither setting overwrites the other
    assert np.array_equal(np.load(r1.labels_file), first.given) and np.array_equal(np.load(r2.labels_file), train.given)


def test_noise_file_is_keyed_by_the_class_count(tmp_path):
    """A `folder` tree that gains an (empty) class folder keeps its label vector but not its
    noise: sym noise draws from the other C - 1 classes."""
    from datasets.folder import Folder

    root = tmp_path / "tree"
    for split, n in (("train", 40), ("test", 4)):
        for i in range(n):
            d = root / split / f"c{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.png")
    spec = noise_lib.NoiseSpec("sym", 0.5, 3)
    ds = Folder()
    four, r4 = make_train_set(ds, ds.load(str(root)), spec, None, tmp_path / "noise")
    (root / "train" / "c4").mkdir()  # a fifth class, no images yet
    ds5 = Folder()
    raw5 = ds5.load(str(root))
    assert ds5.num_classes == 5 and np.array_equal(raw5.train_labels, ds.load(str(root)).train_labels)
    five, r5 = make_train_set(ds5, raw5, spec, None, tmp_path / "noise")
    assert r5.labels_file != r4.labels_file
    assert np.array_equal(five.given, noise_lib.apply_noise(raw5.train_labels, 5, spec))
    assert not np.array_equal(five.given, four.given)


def test_noise_files_are_keyed_by_model_rate_and_seed(tmp_path):
    raw = fake_raw()
    specs = [SYM, noise_lib.NoiseSpec("sym", 0.2, 7), noise_lib.NoiseSpec("sym", 0.4, 8),
             noise_lib.NoiseSpec("pairflip", 0.4, 7)]
    made = [make_train_set(FakeData(), raw, s, None, tmp_path) for s in specs]
    assert len({report.labels_file for _, report in made}) == len(specs)
    for train, report in made:
        assert np.array_equal(np.load(report.labels_file), train.given)


def test_real_noise_dataset_rejects_synthetic_noise(tmp_path):
    raw = fake_raw(with_clean=True)
    raw.train_labels[:100] = (raw.train_labels[:100] + 1) % 10  # the shipped labels are the noisy ones
    with pytest.raises(UsageError, match="real label noise"):
        make_train_set(FakeRealNoise(), raw, SYM, None, tmp_path)
    with pytest.raises(UsageError, match="real label noise"):
        FakeRealNoise().check_noise("sym")
    train, report = make_train_set(FakeRealNoise(), raw, noise_lib.NoiseSpec("none", 0.0, 1), None, tmp_path)
    assert np.array_equal(train.given, raw.train_labels)
    assert np.array_equal(train.clean, raw.train_clean)
    assert report.rate_realized == pytest.approx(0.1)


def test_dataset_without_class_map_rejects_asym(tmp_path):
    with pytest.raises(UsageError, match="asym"):
        make_train_set(FakeData(), fake_raw(), noise_lib.NoiseSpec("asym", 0.2, 1), None, tmp_path)


# --- Fashion-MNIST ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> RawSplits:
    return FashionMNIST().load(None)


def test_fashion_mnist_loads(fashion):
    assert fashion.train_images.shape == (60000, 1, 28, 28)
    assert fashion.test_images.shape == (10000, 1, 28, 28)
    assert fashion.train_images.dtype == np.uint8 and fashion.test_images.dtype == np.uint8
    assert fashion.train_labels.shape == (60000,) and fashion.test_labels.shape == (10000,)
    assert fashion.train_labels.dtype == np.int64
    assert np.array_equal(np.bincount(fashion.train_labels), np.full(10, 6000))
    assert np.array_equal(np.unique(fashion.test_labels), np.arange(10))
    # the stored mean/std are those of the training pixels (from the histogram: no float copy)
    hist = np.bincount(fashion.train_images.ravel(), minlength=256)
    values = np.arange(256) / 255
    mean = hist @ values / hist.sum()
    std = np.sqrt(hist @ (values - mean) ** 2 / hist.sum())
    assert mean == pytest.approx(FashionMNIST.mean[0], abs=1e-3)
    assert std == pytest.approx(FashionMNIST.std[0], abs=1e-3)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x00000800 | ndim, then one big-endian uint32 per dim."""
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)


def test_read_idx_truncated_body(tmp_path):
    a = np.zeros((10, 28, 28), dtype=np.uint8)
    (tmp_path / "short.gz").write_bytes(gzip.compress(idx_bytes(a)[:-100]))
    with pytest.raises(UsageError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_read_idx_wrong_magic(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00"))
    with pytest.raises(UsageError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_read_idx_truncated_gzip_stream(tmp_path):
    a = np.arange(1000, dtype=np.uint8).reshape(10, 100)
    data = gzip.compress(idx_bytes(a))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError):
        read_idx(tmp_path / "cut.gz")


def test_fashion_mnist_load_from_a_root_with_a_truncated_file(tmp_path):
    small = {
        "train_images": np.zeros((20, 28, 28), np.uint8), "train_labels": np.arange(20, dtype=np.uint8) % 10,
        "test_images": np.zeros((10, 28, 28), np.uint8), "test_labels": np.arange(10, dtype=np.uint8),
    }
    for key, array in small.items():
        (tmp_path / FILES[key]).write_bytes(gzip.compress(idx_bytes(array)))
    raw = FashionMNIST().load(str(tmp_path))
    assert raw.train_images.shape == (20, 1, 28, 28) and raw.test_images.shape == (10, 1, 28, 28)
    (tmp_path / FILES["train_labels"]).write_bytes(gzip.compress(idx_bytes(small["train_labels"])[:-3]))
    with pytest.raises(UsageError, match="truncated"):
        FashionMNIST().load(str(tmp_path))


def test_test_subset_is_stratified_fixed_and_logged(tmp_path):
    """--test-subset N evaluates on the same N stratified test images in every run, is part of
    the configuration (hashed, so tables keep such runs apart) and is refused above the test size."""
    from helpers import make_trainer

    from bench.common.errors import UsageError
    from bench.training.config import RunConfig

    a = make_trainer(tmp_path / "a", method="ce", subset=100, epochs=1, test_subset=500, seed=1)
    b = make_trainer(tmp_path / "b", method="ce", subset=100, epochs=1, test_subset=500, seed=2)
    la, lb = a.test_loader.labels.cpu(), b.test_loader.labels.cpu()
    assert len(la) == 500 and torch.equal(la, lb)
    assert torch.bincount(la, minlength=10).tolist() == [50] * 10
    assert RunConfig("ce", test_subset=500).hash() != RunConfig("ce").hash()
    assert RunConfig("ce", test_subset=None).hash() == RunConfig("ce").hash()  # old runs keep their hash
    with pytest.raises(UsageError, match="--test-subset 20000"):
        make_trainer(tmp_path / "c", method="ce", subset=100, epochs=1, test_subset=20000)

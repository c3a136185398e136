"""The data-set abstraction every loader implements, and the step that applies label noise.

A data set module registers a :class:`Dataset` subclass in :data:`DATASETS`. Its ``load``
returns :class:`RawSplits`: uint8 images (N, C, H, W), the labels the data set ships (clean
ones for data sets used with synthetic noise; the web/human labels for real-noise data sets,
with clean labels where known). :func:`make_train_set` then applies the requested noise
model to the whole label vector (so the noise depends only on data set, model, rate and noise
seed), saves the labels to a file, takes the optional class-stratified subset and returns a
:class:`TrainSet` whose ``index`` is each sample's dataset index: methods keep per-sample
state by it. Nothing here knows which method will run.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.common.errors import UsageError
from bench.common.registry import Registry
from datasets import noise as noise_lib

DATASETS: Registry = Registry("data set")


@dataclass
class RawSplits:
    """What a loader reads from disk, before any synthetic noise.

    Images are uint8 arrays (N, C, H, W) for data held in memory, or arrays of file paths (N,)
    for data sets streamed from disk (``Dataset.on_disk``).
    """

    train_images: np.ndarray
    train_labels: np.ndarray  # int64 (N,): the labels the data set ships
    test_images: np.ndarray
    test_labels: np.ndarray   # int64 (M,)
    train_clean: np.ndarray | None = None  # real-noise data sets: clean labels where known
    # further labelled test sets, logged as test_acc_<name> (mini-WebVision's ImageNet val)
    extra_tests: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def splits(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, images, labels) of the training split, the test split and any extra test sets."""
        return [("train", self.train_images, self.train_labels), ("test", self.test_images, self.test_labels),
                *((name, images, labels) for name, (images, labels) in self.extra_tests.items())]


@dataclass
class NoOptions:
    """A data set without options of its own."""


class Dataset:
    """Base class of a registered data set. Subclasses set the class attributes and ``load``;
    options (``--set KEY=VALUE``, e.g. CIFAR-N's label set) are an ``Options`` dataclass."""

    Options: ClassVar[type] = NoOptions
    name: ClassVar[str]
    classes: ClassVar[tuple[str, ...]]
    channels: ClassVar[int]
    image_size: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]  # per channel, on [0, 1] pixels
    std: ClassVar[tuple[float, ...]]
    # Semantic map for the `asym` noise model (None: the data set takes no `asym`).
    asym_map: ClassVar[dict[int, int] | None] = None
    # True for data sets whose labels are already noisy (only noise model `none` applies).
    real_noise: ClassVar[bool] = False
    # Protocol defaults a run uses unless the command line overrides them.
    defaults: ClassVar[dict[str, object]] = {}
    # streamed from image files by DataLoader workers (else held in memory on the device)
    on_disk: ClassVar[bool] = False
    # on-disk data: shorter side before the crop of ``image_size`` (None: crop with padding 4)
    resize: ClassVar[int | None] = None
    # sizes of the real data set, from its documentation (``data check`` prints them beside
    # what it finds)
    expected: ClassVar[dict[str, int]] = {}

    def __init__(self, options: object | None = None) -> None:
        self.opts = options if options is not None else self.Options()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def epoch_samples(self, batch_size: int) -> int | None:
        """Samples drawn afresh (class-balanced) for each epoch; None: every epoch sees all."""
        return None

    def resolved_options(self) -> dict[str, object]:
        """The option values in use (logged as ``dataset.<option>``)."""
        import dataclasses

        return dataclasses.asdict(self.opts)

    def read(self, root: str | None) -> RawSplits:  # pragma: no cover - abstract
        """The splits as the files give them, without validation (``data check`` reports
        what is wrong with them; :meth:`load` refuses it)."""
        raise NotImplementedError

    def load(self, root: str | None) -> RawSplits:
        """The splits, validated: labels in range and, for on-disk data, every listed file
        present; else one :class:`UsageError` naming the first fault."""
        raw = self.read(root)
        problems = find_problems(self, raw)
        if problems:
            raise UsageError(f"data set {self.name}: {problems[0]} (run `python -m bench data check "
                             f"--dataset {self.name} --data-root DIR` for the full list)")
        return raw

    def check_root(self, root: str | None) -> None:
        """Raise :class:`UsageError` naming the expected files if the data is not there.
        Cheap (no decoding): runs before anything is written."""

    def check_noise(self, model: str) -> None:
        """Raise :class:`UsageError` if this data set cannot take noise ``model``."""
        if self.real_noise and model != "none":
            raise UsageError(f"data set {self.name!r} has real label noise; only --noise none applies")
        if model == "asym" and self.asym_map is None:
            raise UsageError(f"data set {self.name!r} has no semantic class map for --noise asym; "
                             f"valid: none, sym, sym-biased, pairflip, instance")


def label_problems(split: str, labels: np.ndarray, num_classes: int) -> list[str]:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad) == 0:
        return []
    first = f"first: sample {bad[0]}, label {labels[bad[0]]}"
    return [f"{len(bad)} {split} labels outside [0, {num_classes - 1}] ({first})"]


def missing_files(files: np.ndarray) -> list[str]:
    return [str(f) for f in files if not os.path.isfile(f)]


def split_problems(split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> list[str]:
    """An empty split, labels out of range and missing image files (cheap: nothing decoded)."""
    problems = [f"the {split} split is empty"] if len(labels) == 0 else []
    problems += label_problems(split, labels, num_classes)
    if images.dtype != np.uint8:
        gone = missing_files(images)
        if gone:
            problems.append(f"{len(gone)} {split} image files are missing, e.g. {gone[0]}")
    return problems


def find_problems(ds: Dataset, raw: RawSplits) -> list[str]:
    """The faults of every split that a run refuses (``data check`` lists the same ones)."""
    problems = [p for split, images, labels in raw.splits()
                for p in split_problems(split, images, labels, ds.num_classes)]
    if raw.train_clean is not None:
        problems += label_problems("clean train", raw.train_clean, ds.num_classes)
    return problems


@dataclass
class TrainSet:
    """The training data a run uses: images, given labels, clean labels when known, indices."""

    images: np.ndarray           # uint8 (n, C, H, W), or file paths (n,) for on-disk data
    given: np.ndarray            # int64 (n,): the labels methods train on
    clean: np.ndarray | None     # int64 (n,) or None when the truth is unknown
    source_index: np.ndarray     # position of each sample in the data set's full training set
    # the validation split held out of the noisy training set (``--val-fraction``), or None
    validation: TrainSet | None = None
    index: np.ndarray = field(init=False)  # 0..n-1: the key of all per-sample state

    def __post_init__(self) -> None:
        self.index = np.arange(len(self.given), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.given)


@dataclass
class NoiseReport:
    """The realised noise of a run: logged for every run."""

    model: str
    rate: float
    seed: int
    rate_realized: float | None
    transition: np.ndarray | None  # rows: true class, columns: given label
    labels_file: Path


# Instance noise on image files: features are the images decoded at this side (Xia et al.'s
# CIFAR features are the 32 x 32 x 3 pixels), whatever size the run trains at, so the noise
# does not depend on --image-size and the feature matrix stays N x 3072 floats.
INSTANCE_SIDE = 32


def noise_file_name(dataset: str, spec: noise_lib.NoiseSpec, fingerprint: str) -> str:
    return f"{dataset}_{spec.model}_{spec.rate:g}_seed{spec.seed}_{fingerprint[:12]}.npy"


def _fingerprint(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec) -> str:
    """Everything the noisy labels depend on besides the spec: the number of classes, the clean
    label vector, the class map and, for instance noise, the images and how they become
    features. It is part of the noise file's name, so two data sets (or two versions of one
    ``folder`` tree) never share a file."""
    h = hashlib.sha1(f"classes={ds.num_classes};".encode())
    h.update(raw.train_labels.astype(np.int64).tobytes())
    h.update(repr(sorted((ds.asym_map or {}).items())).encode())
    if spec.model == "instance":
        imgs = raw.train_images
        if imgs.dtype == np.uint8:
            h.update(repr(imgs.shape).encode())
            h.update(np.ascontiguousarray(imgs).tobytes())
        else:  # the file list and the size the files are decoded at
            h.update(f"files@{INSTANCE_SIDE}px:".encode())
            h.update("\n".join(map(str, imgs)).encode())
    return h.hexdigest()


def instance_features(ds: Dataset, images: np.ndarray) -> np.ndarray:
    """Xia et al.'s features: flattened pixels minus the data set's mean image (our convention;
    noise.py then L2-normalises each sample). Raw non-negative pixels all point the same way,
    so every sample of a class would flip alike; centred pixels make the flip distribution
    depend on the image.

    In-memory images are the features as they are. Image files are decoded one at a time at
    ``INSTANCE_SIDE`` px (JPEG draft mode where the format has one) into one preallocated
    float32 matrix; centring is done in place. Peak memory is that matrix (N x 3072 x 4 bytes)
    and one image, whatever the image count or the training size."""
    if images.dtype == np.uint8:
        flat = images.reshape(len(images), -1).astype(np.float32)
    else:
        from PIL import Image

        side = INSTANCE_SIDE
        flat = np.empty((len(images), side * side * 3), np.float32)
        for i, path in enumerate(images):
            with Image.open(path) as im:
                im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale (no-op otherwise)
                flat[i] = np.asarray(im.convert("RGB").resize((side, side), Image.BILINEAR), np.float32).ravel()
    flat -= flat.mean(axis=0, keepdims=True)
    return flat


def temp_name(path: str | Path) -> Path:
    """A temporary name beside ``path``, of this process (``.NAME.PID.HEX8.tmp``): no image
    suffix, so no loader lists it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file of this process (``write(tmp)``), then rename: parallel
    runs of the same setting, or a packing killed mid-write, never see (or leave) half a file
    under its real name."""
    tmp = temp_name(path)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_labels(path: Path, labels: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, labels)

    write_atomic(path, write)


def noisy_labels(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec, cache_dir: Path) -> tuple[np.ndarray, Path]:
    """Given labels of the FULL training set, read from the noise file or drawn and saved there.

    The file's name holds the data set, model, rate, seed and a fingerprint of everything else
    the labels depend on (:func:`_fingerprint`), so a file is reused only for exactly the same
    noise, never for a data set whose classes, labels or images changed.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / noise_file_name(ds.name, spec, _fingerprint(ds, raw, spec))
    if path.exists():
        saved = np.load(path, allow_pickle=False)
        if len(saved) == len(raw.train_labels):
            return saved, path
    features = instance_features(ds, raw.train_images) if spec.model == "instance" else None
    try:
        given = noise_lib.apply_noise(raw.train_labels, ds.num_classes, spec, asym_map=ds.asym_map,
                                      features=features, dataset=ds.name)
    except noise_lib.NoiseError as exc:
        raise UsageError(str(exc)) from None
    _save_labels(path, given)
    return given, path


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` samples, as equal a share of each class as the counts allow.

    Chosen by ``seed`` (the noise seed), so the same subset goes with the same noise file.
    """
    if not 0 < n <= len(labels):
        raise UsageError(f"--subset {n} is outside [1, {len(labels)}] (the training set size)")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / counts.sum() * n).astype(int)
    # hand out the remainder to the classes with the largest fractional parts
    frac = counts / counts.sum() * n - quota
    for k in np.argsort(-frac)[: n - quota.sum()]:
        quota[k] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
             for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picks))


def validation_split(given: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of the held-out validation samples: ``fraction`` of the training set,
    stratified by the GIVEN (noisy) labels, the only ones a user of real noisy data has, and
    chosen by the noise seed, so every trial and method of a study sees the same split."""
    n = max(1, round(fraction * len(given)))
    if n >= len(given):
        raise UsageError(f"--val-fraction {fraction}: leaves no training samples out of {len(given)}")
    # a stream apart from the subset's (same seed): the split must not mirror the subset choice
    return stratified_subset(given, n, int(np.random.default_rng([seed, 0x5EED]).integers(2**32)))


def make_train_set(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec, subset: int | None,
                   cache_dir: Path, val_fraction: float = 0.0) -> tuple[TrainSet, NoiseReport]:
    """Apply noise to the whole training set, take the subset, hold out the validation split
    (in ``TrainSet.validation``, with its noisy labels); report the realised noise of what is
    trained on."""
    ds.check_noise(spec.model)
    if ds.real_noise:
        given, clean = raw.train_labels.astype(np.int64), raw.train_clean
        key = hashlib.sha1(repr(sorted(ds.resolved_options().items())).encode())
        key.update(given.tobytes())
        path = cache_dir / f"{ds.name}_real_{key.hexdigest()[:12]}.npy"
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save_labels(path, given)
    else:
        given, path = noisy_labels(ds, raw, spec, cache_dir)
        clean = raw.train_labels.astype(np.int64)
    keep = np.arange(len(given))
    if subset is not None:
        keep = stratified_subset(clean if clean is not None else given, subset, spec.seed)
    held: TrainSet | None = None
    if val_fraction > 0:
        val_pos = validation_split(given[keep], val_fraction, spec.seed)
        vkeep = keep[val_pos]
        held = TrainSet(raw.train_images[vkeep], given[vkeep], None if clean is None else clean[vkeep], vkeep)
        keep = np.delete(keep, val_pos)
    train = TrainSet(raw.train_images[keep], given[keep], None if clean is None else clean[keep], keep, held)
    report = NoiseReport(spec.model, spec.rate, spec.seed, None, None, path)
    if train.clean is not None:
        report.rate_realized = noise_lib.realized_rate(train.clean, train.given)
        report.transition = noise_lib.transition_matrix(train.clean, train.given, ds.num_classes)
    return train, report

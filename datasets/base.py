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
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.errors import UsageError
from bench.registry import Registry
from datasets import noise as noise_lib

DATASETS: Registry = Registry("data set")


@dataclass
class RawSplits:
    """What a loader reads from disk, before any synthetic noise."""

    train_images: np.ndarray  # uint8 (N, C, H, W)
    train_labels: np.ndarray  # int64 (N,): the labels the data set ships
    test_images: np.ndarray   # uint8 (M, C, H, W)
    test_labels: np.ndarray   # int64 (M,)
    train_clean: np.ndarray | None = None  # real-noise data sets: clean labels where known


class Dataset:
    """Base class of a registered data set. Subclasses set the class attributes and ``load``."""

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, root: str | None) -> RawSplits:  # pragma: no cover - abstract
        raise NotImplementedError

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


@dataclass
class TrainSet:
    """The training data a run uses: images, given labels, clean labels when known, indices."""

    images: np.ndarray           # uint8 (n, C, H, W)
    given: np.ndarray            # int64 (n,): the labels methods train on
    clean: np.ndarray | None     # int64 (n,) or None when the truth is unknown
    source_index: np.ndarray     # position of each sample in the data set's full training set
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


def noise_file_name(dataset: str, spec: noise_lib.NoiseSpec) -> str:
    return f"{dataset}_{spec.model}_{spec.rate:g}_seed{spec.seed}.npy"


def _fingerprint(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec) -> str:
    """What the noisy labels depend on besides the spec: the clean labels, the class map and,
    for instance noise, the images."""
    h = hashlib.sha1(raw.train_labels.astype(np.int64).tobytes())
    h.update(repr(sorted((ds.asym_map or {}).items())).encode())
    if spec.model == "instance":
        h.update(np.ascontiguousarray(raw.train_images).tobytes())
    return h.hexdigest()


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file of this process, then rename: parallel runs of the same
    setting never see (or leave) half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def noisy_labels(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec, cache_dir: Path) -> tuple[np.ndarray, Path]:
    """Given labels of the FULL training set, read from the noise file or drawn and saved there.

    The file is keyed by data set, model, rate and seed; a ``.sha1`` beside it fingerprints
    what else the labels depend on (clean labels, class map, images for instance noise), so a
    stale file is redrawn, never silently reused.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / noise_file_name(ds.name, spec)
    meta = path.with_suffix(".sha1")
    fingerprint = _fingerprint(ds, raw, spec)
    if path.exists() and meta.exists() and meta.read_text().strip() == fingerprint:
        saved = np.load(path, allow_pickle=False)
        if len(saved) == len(raw.train_labels):
            return saved, path
    features = None
    if spec.model == "instance":
        # Our convention for Xia et al.'s features (noise-models.md leaves it open): pixels
        # minus the data set's mean image; noise.py then L2-normalises each sample. Raw
        # non-negative pixels all point the same way, so every sample of a class would flip
        # alike; centred pixels make the flip distribution depend on the image.
        flat = raw.train_images.reshape(len(raw.train_images), -1).astype(np.float32)
        features = flat - flat.mean(axis=0, keepdims=True)
    try:
        given = noise_lib.apply_noise(raw.train_labels, ds.num_classes, spec, asym_map=ds.asym_map,
                                      features=features, dataset=ds.name)
    except noise_lib.NoiseError as exc:
        raise UsageError(str(exc)) from None
    def save_labels(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, given)

    _write_atomic(path, save_labels)
    _write_atomic(meta, lambda tmp: tmp.write_text(fingerprint + "\n"))
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


def make_train_set(ds: Dataset, raw: RawSplits, spec: noise_lib.NoiseSpec, subset: int | None,
                   cache_dir: Path) -> tuple[TrainSet, NoiseReport]:
    """Apply noise to the whole training set, then take the subset; report the realised noise."""
    ds.check_noise(spec.model)
    if ds.real_noise:
        given, clean = raw.train_labels.astype(np.int64), raw.train_clean
        path = cache_dir / f"{ds.name}_real.npy"
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, given)
    else:
        given, path = noisy_labels(ds, raw, spec, cache_dir)
        clean = raw.train_labels.astype(np.int64)
    keep = np.arange(len(given))
    if subset is not None:
        keep = stratified_subset(clean if clean is not None else given, subset, spec.seed)
    train = TrainSet(raw.train_images[keep], given[keep], None if clean is None else clean[keep], keep)
    report = NoiseReport(spec.model, spec.rate, spec.seed, None, None, path)
    if train.clean is not None:
        report.rate_realized = noise_lib.realized_rate(train.clean, train.given)
        report.transition = noise_lib.transition_matrix(train.clean, train.given, ds.num_classes)
    return train, report

"""Data assembly: from a run's configuration to the loaders a trainer iterates.

The data set is read (its files checked), the noise drawn or read from its file, the subset and
the validation split taken (:func:`datasets.base.make_train_set`), and each split becomes a
loader: in memory on the device for array data, DataLoader workers for image files. The clean
labels stay here and with the trainer's diagnostics; a method never sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common.cores import usable_cores
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.config import Placement, RunConfig
from bench.training.data import InMemoryLoader, make_view_maker
from bench.training.disk import DiskLoader, DiskPool, file_transforms
from datasets.base import DATASETS, Dataset, NoiseReport, TrainSet, make_train_set, stratified_subset
from datasets.noise import NoiseSpec


@dataclass
class Assembly:
    """What a run trains and evaluates on."""

    dataset: Dataset
    train_set: TrainSet
    noise: NoiseReport
    train: Any  # InMemoryLoader or DiskLoader over the training samples
    tests: dict[str, Any]  # "" -> the test set; name -> further test sets (test_acc_<name>)
    val: Any | None  # the validation split held out of the noisy training set
    image_size: int  # the side the backbone sees
    epoch_samples: int | None  # a fresh class-balanced sample per epoch (Clothing1M), or None
    pool: DiskPool | None = None  # the workers of on-disk data (closed when the run ends)

    @property
    def is_clean(self) -> torch.Tensor | None:
        """Per training sample: is its given label the true one (None where unknown)."""
        return None if self.train.clean is None else self.train.clean == self.train.labels


def noise_cache(place: Placement) -> Path:
    """Where noise files live: ``results/noise`` beside ``results/runs``."""
    return Path(place.out).parent / "noise"


def load_dataset(config: RunConfig) -> Dataset:
    ds_cls = DATASETS.get(config.dataset)
    return ds_cls(build_options(ds_cls, {k: str(v) for k, v in config.dataset_options.items()}, "data set"))


def assemble(config: RunConfig, place: Placement, device: torch.device, channels_last: bool) -> Assembly:
    ds = load_dataset(config)
    check_decode(config.decode, ds, device)
    spec = NoiseSpec(config.noise, config.noise_rate, config.noise_seed)  # checked by the resolver
    raw = ds.load(place.data_root)
    train, report = make_train_set(ds, raw, spec, config.subset, noise_cache(place), config.val_fraction)
    image_size = config.image_size or ds.image_size

    pool = disk_pool(ds, config, place, device, image_size) if ds.on_disk else None

    def loader(split: str, images: Any, labels: Any, clean: Any, batch_size: int) -> Any:
        if pool is None:
            views = make_view_maker(ds.mean, ds.std, device, config.augment, channels_last, config.image_size,
                                    config.views)
            return InMemoryLoader(images, labels, clean, views, batch_size, device)
        views = make_view_maker(ds.mean, ds.std, device, config.augment, channels_last, policy=config.views)
        return DiskLoader(pool, split, images, labels, clean, views, batch_size)

    test_images, test_labels = raw.test_images, raw.test_labels
    if config.test_subset is not None:  # the same images every run: stratified, seed 0
        if config.test_subset > len(test_labels):
            raise UsageError(f"--test-subset {config.test_subset} is larger than the test set ({len(test_labels)})")
        keep = stratified_subset(np.asarray(test_labels), config.test_subset, 0)
        test_images = test_images[keep] if hasattr(test_images, "shape") else [test_images[i] for i in keep]
        test_labels = np.asarray(test_labels)[keep]
    tests = {"": loader("test", test_images, test_labels, None, config.eval_batch_size)}
    for name, (images, labels) in raw.extra_tests.items():
        tests[name] = loader(f"test_{name}", images, labels, None, config.eval_batch_size)
    val = train.validation
    epoch_samples = ds.epoch_samples(config.batch_size)
    if epoch_samples is not None and epoch_samples < ds.num_classes:
        raise UsageError(f"samples_per_epoch {epoch_samples} is smaller than the {ds.num_classes} "
                         "classes it is balanced over; give at least that many")
    return Assembly(
        dataset=ds, train_set=train, noise=report,
        train=loader("train", train.images, train.given, train.clean, config.batch_size), tests=tests,
        val=None if val is None else loader("val", val.images, val.given, val.clean, config.eval_batch_size),
        image_size=image_size, epoch_samples=epoch_samples, pool=pool)


def check_decode(decode: str, ds: Dataset, device: torch.device) -> None:
    """``--decode gpu`` needs image files and a CUDA device: else one line, before anything is read."""
    if decode != "gpu":
        return
    if not ds.on_disk:
        raise UsageError(f"--decode gpu: data set {ds.name} is held in memory, nothing is decoded; valid: cpu")
    if device.type != "cuda":
        raise UsageError(f"--decode gpu needs a CUDA device (this run's is {device.type}); valid here: cpu")


def disk_pool(ds: Dataset, config: RunConfig, place: Placement, device: torch.device, image_size: int) -> DiskPool:
    """The run's workers for image files, with the protocol's resize and crop."""
    if ds.resize:  # keep the data set's resize : crop ratio (256 : 224)
        resize = round(image_size * ds.resize / ds.image_size)
    else:  # native size: pad-and-crop; another size: the ImageNet-style 8 : 7
        resize = None if image_size == ds.image_size else round(image_size * 8 / 7)
    transforms = file_transforms(image_size, resize, config.augment, config.views)
    workers = usable_cores() if place.workers is None else place.workers
    pin = None if place.pin_memory == "auto" else place.pin_memory == "on"
    return DiskPool(transforms, image_size, resize, config.augment, config.views, device, workers,
                    place.prefetch, pin, config.decode)


def draw_pool(assembly: Assembly, seed: int, epoch: int, device: torch.device) -> torch.Tensor | None:
    """This epoch's class-balanced sample of training indices (Clothing1M's epoch), or None.

    Drawn from (seed, epoch) alone, so a resumed run draws the same pool; about
    ``samples / C`` per given class, fewer where a class has fewer samples (DivideMix's
    dataloader_clothing1M.py does the same)."""
    n = assembly.epoch_samples
    if n is None or n >= len(assembly.train):
        return None
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7919)
    labels = assembly.train.labels.cpu()
    num_classes = assembly.dataset.num_classes
    per_class = n // num_classes
    picks = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picks)).values.to(device)

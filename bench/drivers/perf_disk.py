"""``bench perf`` on image files: what bounds an epoch when the images are read from disk.

Four rates, in images per second, measured in one process on the run's own trainer (its
:class:`~bench.training.disk.DiskPool`, views, network and optimiser; CE):

- **decode, 1 core**: items of the pool's :class:`~bench.training.disk.FileViews` made in this
  process, one thread, as a worker makes them (the method's training views, the same
  transforms); 2 untimed, then at least :data:`DECODE_MIN` and at most :data:`DECODE_MAX`
  images (about :data:`DECODE_SECONDS`), their files read once before the clock starts (the
  page cache, as after a first epoch). Under ``--decode gpu`` a worker only reads the bytes and
  draws the crop: that item's rate is measured too, and the efficiency is taken against it.
- **loader alone**: ``DiskLoader.iterate`` over K batches of the training set (``--batches``,
  capped by the data, full batches only), nothing trained, timed from the pass's start to its
  last batch; worker start-up is left out (an untimed pass of one batch starts the workers
  first: see :func:`loader_pass`), and the files are read once before (the page cache: a cold
  disk is not measured).
  Under ``--decode gpu`` this is the whole decode path, the device's decoding included (the
  device is synchronised before the clock is read). Its efficiency: loader / (workers x the
  1-core rate of what a worker does).
- **step alone**: the trainer's own ``step`` (CE: forward, loss, backward, optimiser step, as
  in an epoch) on those K batches, held in memory on the device, after an untimed step on the
  start-up pass's batch (warm-up: cuDNN's autotuning, ``--compile``); the device is
  synchronised before and after.
- **epoch**: training images of the trainer's second epoch over ``train_time_s`` (the first
  carries the warm-ups); data sets that sample their epoch (Clothing1M's ``samples_per_epoch``)
  sample K x batch images unless ``--set samples_per_epoch=`` says otherwise.

Then which one bounds training: *loader-bound* when the loader alone is slower than the step
alone, else *step-bound*, with the ratio, and how close the epoch gets to the slower of the two.
:func:`make_tree` writes the synthetic trees the suites measure (:mod:`datasets.synth`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common.errors import UsageError
from bench.training.data import epoch_generator
from bench.training.disk import DiskLoader, FileViews

DECODE_UNTIMED = 2  # items decoded before the clock starts (imports, first allocations)
DECODE_MIN, DECODE_MAX = 64, 200  # images timed: at least, at most
DECODE_SECONDS = 2.0  # once DECODE_MIN are timed, stop after this long


def plural(n: int, word: str, ending: str = "s") -> str:
    return f"{n} {word}{'' if n == 1 else ending}"


@dataclass
class DiskFigures:
    """The rates of one on-disk shape and what they were measured on."""

    title: str  # data set, backbone, size, batch, decode, workers, device
    views: tuple[str, ...]
    workers: int
    batch: int
    decode_rate: float  # items/s of a CPU decode in this process (1 thread)
    decode_images: int
    loader_rate: float
    loader_images: int
    loader_batches: int  # timed
    step_rate: float
    step_images: int
    step_batches: int
    epoch_rate: float
    epoch_images: int
    epoch_s: float
    device: str
    item_rate: float | None = None  # --decode gpu: a worker's item (bytes and crop geometry)

    @property
    def worker_rate(self) -> float:
        """What one worker makes per second, alone on a core."""
        return self.item_rate if self.item_rate is not None else self.decode_rate

    @property
    def efficiency(self) -> float:
        return self.loader_rate / (max(self.workers, 1) * self.worker_rate)

    @property
    def loader_bound(self) -> bool:
        return self.loader_rate < self.step_rate

    @property
    def epoch_share(self) -> float:
        """The epoch's rate over the slower of loader and step."""
        return self.epoch_rate / min(self.loader_rate, self.step_rate)


# --- the single-core rate -------------------------------------------------------------------------


def read_files(files: Sequence[str], indices: Sequence[int]) -> None:
    """Read each file once, into the page cache, as a second epoch finds them: the figures are of
    decoding, not of a cold disk (measured on the 2,400-image tree: 198 images/s for the loader
    on files never read, 362 on the same files read before)."""
    for i in indices:
        Path(files[i]).read_bytes()



def item_rate(dataset: FileViews, split: str, indices: Sequence[int], views: tuple[str, ...], seed: int
              ) -> tuple[float, int]:
    """Items per second of ``dataset`` in this process with one torch thread: ``DECODE_UNTIMED``
    first, then until ``DECODE_MAX`` are timed, or ``DECODE_MIN`` and ``DECODE_SECONDS`` have
    passed (``indices`` cycled if fewer)."""
    order = list(indices)[:DECODE_UNTIMED + DECODE_MAX]
    read_files(dataset.files[split], order)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's (DataLoader sets one thread in each)
    try:
        for k in range(DECODE_UNTIMED):
            dataset[(split, order[k % len(order)], seed, views)]
        done, t0 = 0, time.perf_counter()
        while done < DECODE_MAX:
            dataset[(split, order[(DECODE_UNTIMED + done) % len(order)], seed, views)]
            done += 1
            if done >= DECODE_MIN and time.perf_counter() - t0 >= DECODE_SECONDS:
                break
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return done / seconds, done


# --- the loader, the step, the epoch --------------------------------------------------------------


def loader_pass(trainer: Any, warm: torch.Tensor, indices: torch.Tensor, views: tuple[str, ...]
                ) -> tuple[float, int, list[dict]]:
    """Images per second of ``DiskLoader.iterate`` over ``indices`` in batches of the run's size,
    from the pass's start to its last batch; the workers are started before by an untimed pass
    over ``warm`` (one batch). The batches as made (on the device), the warm one first, for the
    step.

    Why not leave out the timed pass's first batch instead: its workers decode their first
    batches side by side, so when the first arrives the next ``workers - 1`` are about ready, and
    a clock started there counts them as made in no time (2.4 x the true rate with 16 workers
    and 40 batches). From the pass's start the workers' parallel rounds are all inside."""
    loader: DiskLoader = trainer.train_loader
    gen = epoch_generator(trainer.config.seed, 0, trainer.device)
    bs = trainer.config.batch_size
    kept = list(loader.iterate(views, gen, shuffle=False, indices=warm, batch_size=bs))
    trainer.sync()
    t0 = time.perf_counter()
    for batch in loader.iterate(views, gen, shuffle=False, indices=indices, batch_size=bs):
        kept.append(batch)
    trainer.sync()
    seconds = time.perf_counter() - t0
    images = sum(len(b["index"]) for b in kept[1:])
    if images == 0 or len(kept) < 2:  # every file failed to decode
        raise UsageError("perf on disk: no image of the timed batches decoded (see `bench data check`)")
    return images / seconds, images, kept


def step_pass(trainer: Any, batches: list[dict], epoch: int = 0) -> tuple[float, int]:
    """Images per second of the trainer's CE steps on ``batches[1:]`` (already on the device),
    after an untimed step on ``batches[0]``."""
    m = trainer.method
    trainer.enter_epoch(epoch)
    m.train_mode(True)
    phase = m.phases(epoch)[0]
    trainer.step(batches[0], epoch, phase)
    trainer.sync()
    t0 = time.perf_counter()
    for batch in batches[1:]:
        trainer.step(batch, epoch, phase)
    trainer.sync()
    images = sum(len(b["index"]) for b in batches[1:])
    return images / (time.perf_counter() - t0), images


def epoch_pass(trainer: Any) -> tuple[float, int, float]:
    """Images per second of the trainer's second epoch (training time only), its images, seconds."""
    trainer.run_epoch(0)
    metrics = trainer.run_epoch(1)
    n = len(trainer.train_loader) if trainer.pool is None else len(trainer.pool)
    n -= int(metrics.get("skipped_images", 0))
    return n / metrics["train_time_s"], n, metrics["train_time_s"]


def measure_disk(trainer: Any, batches: int, log: Callable[[str], None], steps: int | None = None) -> DiskFigures:
    """Every rate of a built trainer on on-disk data (CE), in the order that keeps them apart:
    the 1-core rate before any worker starts, then the loader, the steps, two epochs. ``steps``:
    time the steps on the first that many of the loader's batches only (the CPU suite's
    ResNet-50, whose steps take a minute each); None: on all."""
    cfg, loader = trainer.config, trainer.train_loader
    pool = trainer.data.pool
    bs, n = cfg.batch_size, len(loader)
    k = min(batches, n // bs - 1) if n // bs > 1 else n // bs  # a batch more starts the workers
    if k < 1:
        raise UsageError(f"perf on disk: {n} training images make no full batch of {bs}: lower --batch-size")
    views = tuple(trainer.method.views(0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    seed = cfg.seed * 1_000_003
    cpu_items = FileViews(pool.files, pool.dataset.transforms, pool.dataset.size, pool.dataset.resize,
                          pool.dataset.augment, pool.dataset.policy, "cpu")
    decode_rate, decode_images = item_rate(cpu_items, loader.split, perm.tolist(), views, seed)
    own = item_rate(pool.dataset, loader.split, perm.tolist(), views, seed)[0] if pool.decode == "gpu" else None
    log(f"  decode, 1 core: {decode_rate:.1f} images/s" + (f"; worker item {own:.1f}/s" if own else ""))
    timed = perm[:k * bs]
    warm = perm[k * bs:(k + 1) * bs] if (k + 1) * bs <= n else perm[:bs]  # its images again if none are left
    read_files(loader.files, perm[:(k + 1) * bs].tolist())
    loader_rate, loader_images, kept = loader_pass(trainer, warm, timed, views)
    log(f"  loader alone: {loader_rate:.1f} images/s over {plural(len(kept) - 1, 'batch', 'es')}")
    kept = kept if steps is None else kept[:1 + max(1, steps)]
    step_rate, step_images = step_pass(trainer, kept)
    step_batches = len(kept) - 1
    del kept
    log(f"  step alone: {step_rate:.1f} images/s")
    epoch_rate, epoch_images, epoch_s = epoch_pass(trainer)
    log(f"  epoch: {epoch_rate:.1f} images/s ({epoch_images} images in {epoch_s:.2f} s)")
    title = (f"{cfg.dataset}, {cfg.backbone}, {trainer.data.image_size} px, batch {bs}, CE view "
             f"{','.join(views)}, decode {pool.decode}, {plural(pool.workers, 'worker')} (prefetch "
             f"{pool.prefetch}, pinned {'on' if pool.pin else 'off'}), device {trainer.device}, amp "
             f"{'on' if trainer.amp else 'off'}, {plural(torch.get_num_threads(), 'thread')}, {os.cpu_count()} CPUs")
    return DiskFigures(title, views, pool.workers, bs, decode_rate, decode_images, loader_rate, loader_images, k,
                       step_rate, step_images, step_batches, epoch_rate, epoch_images, epoch_s, str(trainer.device),
                       own)


def print_disk(fig: DiskFigures, title: str = "") -> None:
    """The rates as a table, one row each, then the bound."""
    head = f"{title}: " if title else ""
    ms = 1000 / fig.decode_rate
    rows = [("decode, 1 core", fig.decode_rate,
             f"{fig.decode_images} images decoded in this process, 1 thread ({ms:.2f} ms each)")]
    if fig.item_rate is not None:
        rows.append(("worker item", fig.item_rate, "--decode gpu: a worker's file read and crop draw, 1 thread"))
    what = "workers' 1-core item rate" if fig.item_rate is not None else "1-core rate"
    cores = f"; {fig.loader_rate / fig.decode_rate:.1f} cores' worth of CPU decode" if fig.item_rate else ""
    who = (f"{plural(fig.workers, 'worker')} x {what}" if fig.workers else f"this process (--workers 0) x {what}")
    rows += [("loader alone", fig.loader_rate,
              f"{plural(fig.loader_batches, 'batch', 'es')} of {fig.batch}, "
              + ("workers started before" if fig.workers else "decoded in this process")
              + f", files read before; efficiency {fig.efficiency:.2f} = loader / ({who}){cores}"),
             ("step alone", fig.step_rate,
              (f"CE steps on the same {plural(fig.loader_batches, 'batch', 'es')}"
               if fig.step_batches == fig.loader_batches else
               f"CE steps on {fig.step_batches} of these {fig.loader_batches} batches")
              + f" held on {fig.device}, after 1 untimed"),
             ("epoch", fig.epoch_rate, f"{fig.epoch_images:,} images trained in {fig.epoch_s:.2f} s (epoch 2)")]
    print(f"{head}on disk: {fig.title}")
    print(f"{head}  {'measurement':<16}{'rate':>10}           detail")
    for name, rate, detail in rows:
        print(f"{head}  {name:<16}{rate:>10.1f} images/s  {detail}")
    if fig.loader_bound:
        bound = f"loader-bound: loader / step = {fig.loader_rate / fig.step_rate:.2f}"
    else:
        bound = f"step-bound: step / loader = {fig.step_rate / fig.loader_rate:.2f}"
    print(f"{head}  {bound}; epoch / min(loader, step) = {fig.epoch_share:.2f}")


# --- synthetic trees for the suites ---------------------------------------------------------------


def make_tree(root: Path, n: int, size: str, log: Callable[[str], None], jobs: int | None = None) -> str:
    """A synthetic Clothing1M tree of ``n`` training images of ``size`` (WxH) at ``root``,
    written with ``jobs`` processes (default: the cores this process may use); the line
    :func:`datasets.synth.describe` gives (its generation time included)."""
    from bench.common.cores import usable_cores
    from datasets.synth import describe, make_spec, write_tree

    jobs = jobs or usable_cores()
    spec = make_spec("clothing1m", n, size)
    report = write_tree(spec, root, jobs, log=log)
    return describe(spec, report, jobs, root)

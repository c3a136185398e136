"""``python -m bench perf``: where the time goes, measured like for like in one process.

Three measurements, each printed as seconds per epoch with the first epoch left out (it carries
cuDNN's autotuning, the allocator's warm-up and any compilation):

- **trainer / bare loop** (the default): CE through the trainer against the loop one writes by
  hand, doing exactly the same work: the same backbone and initial weights, data (one uint8
  tensor on the device), training view (the loader's own augmentation code), batch size,
  optimiser (and its ``--fused`` flag), AMP dtype and loss scaling, channels-last,
  ``--compile`` mode and evaluation pass each epoch. The trainer's time includes all it does
  per epoch (running sums, evaluation, the MLflow record, the checkpoint). The two alternate
  epoch by epoch (the bare loop's first in every other repeat), and the medians are compared.
  Each side's epoch is printed in parts (training, evaluation; the trainer's hooks and its
  checkpoint and record), and a third ratio leaves the checkpoint and record out, which a bare
  loop without checkpoints never pays (torch.save of PreAct ResNet-18's or ResNet-50's 90 or
  190 MB with SGD momentum took 120 or 250 ms on the 2-core reference machine; against a GPU
  epoch of a second or two that is not small).
- **methods** (``--methods a,b,c``): each method through the trainer on the same data and
  backbone, its schedule shortened by its ``smoke_options`` (a one-epoch warm-up), after one
  untimed CE epoch that warms the device up. Each epoch is labelled by the method's phases and
  views; a method's figure is the mean over the epochs of its last phase (its first epoch left
  out when all epochs are alike), with ratios to CE and DivideMix when they are in the list.
- **strong view** (``--strong``): the share of a wrong-event stage-2 step spent making the
  strong view (batched RandAugment), with the per-op dispatch of old (``subset``) and the
  whole-batch one (``batched``), in the same process.

- **on disk** (the default when the data set is read from image files, ``Dataset.on_disk``:
  Clothing1M and the other file layouts; :mod:`bench.drivers.perf_disk`): images per second of
  the decode on one core in this process, the loader alone over ``--batches`` K batches (its
  workers started before; with its efficiency against the workers' cores), CE steps alone on
  those batches held on the device, and the trainer's second epoch; then whether the loader or
  the step bounds training, and how close the epoch gets to the slower of the two.

``--suite cpu`` and ``--suite gpu`` run the figures of issue 17's "Done when" in one command
(README, "Speed"); ``--suite disk`` the on-disk figures on a synthetic Clothing1M tree it writes
first (:mod:`datasets.synth`), and ``--suite gpu`` ends with its on-disk shapes (ResNet-50 with
``--decode cpu`` and ``gpu``, and CE / DivideMix / IDO epochs on the tree). Nothing here writes
outside a temporary folder.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common.errors import UsageError
from bench.common.options import option_names
from bench.drivers.perf_disk import DiskFigures, make_tree, measure_disk, plural, print_disk
from bench.training.config import parse_set
from bench.training.data import epoch_generator
from bench.training.resolve import RunSpec, resolve
from bench.training.trainer import Trainer, make_optimizer, rng_state, seed_everything, set_rng_state
from datasets.base import DATASETS


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- a tracker for machines without MLflow (a GPU box) --------------------------------------------


class MemoryTracker:
    """Tracker's interface, keeping nothing: where MLflow is not installed, ``perf`` still
    times the trainer (without the cost of the record, which it then says)."""

    def open(self, uri: str | None, experiment: str) -> MemoryTracker:
        return self

    def start(self, run_name: str, tags: Any) -> str:
        return "memory"

    def __getattr__(self, name: str) -> Any:  # log_params, log_metrics, set_tag, flush, end, close, ...
        return lambda *args, **kwargs: None


def have_mlflow() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


# --- specs ------------------------------------------------------------------------------------------


def perf_spec(request: dict[str, Any], tmp: Path, method: str = "ce", extra_sets: dict[str, str] | None = None
              ) -> RunSpec:
    """``request`` (the command line's run options) for ``method``, recorded in ``tmp``."""
    sets = {**(extra_sets or {}), **parse_set(request.get("sets"))}
    req = {**request, "method": method, "sets": sets, "out": str(tmp / "runs"), "progress": False,
           "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "perf"}
    return resolve(req)


def new_run_dir(tmp: Path, tag: str) -> Path:
    path = tmp / "runs" / tag
    path.mkdir(parents=True)
    return path


# --- the trainer, epoch by epoch ---------------------------------------------------------------------


@dataclass
class EpochTimes:
    """Per-epoch seconds of one run, every epoch (the first included: callers drop it)."""

    epoch: list[float] = field(default_factory=list)  # end of one epoch's record to the next
    train: list[float] = field(default_factory=list)  # training loop alone (train_time_s)
    hooks: list[float] = field(default_factory=list)
    evaluation: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the method's phases and views of each epoch

    @property
    def rest(self) -> list[float]:
        """Per epoch, what is outside training, hooks and evaluation: the trainer's checkpoint,
        its MLflow record and the perf callback (0 for the bare loop)."""
        return [max(e - t - h - v, 0.0) for e, t, h, v in
                zip(self.epoch, self.train, self.hooks, self.evaluation, strict=True)]

    @property
    def loop(self) -> list[float]:
        """Per epoch, the epoch less its checkpoint and record."""
        return [e - r for e, r in zip(self.epoch, self.rest, strict=True)]


def run_trainer(spec: RunSpec, run_dir: Path, between: Callable[[], Any] | None = None) -> EpochTimes:
    """Train ``spec`` and time each epoch: from the end of the previous epoch's checkpoint and
    record (the first: from the end of setup) to the end of this one's. ``between`` runs after
    each epoch's timing, outside it (the bare loop's epoch, interleaved)."""
    out = EpochTimes()
    marks: list[float] = []
    starts: list[float] = []

    def callback(epoch: int, metrics: dict[str, float]) -> bool:
        marks.append(time.perf_counter())
        out.train.append(metrics["train_time_s"])
        out.hooks.append(metrics["hooks_time_s"])
        out.evaluation.append(metrics["eval_time_s"])
        if between is not None:
            between()
        starts.append(time.perf_counter())
        return False

    tracker = None if have_mlflow() else MemoryTracker()
    trainer = Trainer(spec, run_dir, epoch_callback=callback, tracker=tracker).build()
    m = trainer.method
    out.labels = [phase_label(m, e) for e in range(spec.config.epochs)]
    t0 = time.perf_counter()
    summary = trainer.run()
    start = t0 + summary["setup_time_s"]
    out.epoch = [b - a for a, b in zip([start, *starts[:-1]], marks, strict=True)]
    return out


def phase_label(method: Any, epoch: int) -> str:
    """What a method does in ``epoch``: its phases' names and the views it asks for."""
    names = "+".join(p.name for p in method.phases(epoch))
    return f"{names} [{','.join(method.views(epoch))}]"


# --- the bare loop -------------------------------------------------------------------------------------


def run_bare(spec: RunSpec, probe: Trainer, keep: list[torch.nn.Module] | None = None) -> EpochTimes:
    """Every epoch of :func:`bare_epochs` in a row."""
    out = EpochTimes()
    for _ in bare_epochs(spec, probe, out, keep):
        pass
    return out


def bare_epochs(spec: RunSpec, probe: Trainer, out: EpochTimes, keep: list[torch.nn.Module] | None = None
                ) -> Iterator[None]:
    """The hand-written loop on the probe trainer's own tensors, a fresh network built as the
    trainer builds it (channels-last, ``--compile``) and the run's optimiser: index, augment
    (the loader's training view), forward under the same autocast, loss, zero_grad, backward
    (scaled as the trainer scales it), step; then the test pass. One epoch per ``next``, its
    times appended to ``out``. Its random state is its own, swapped in and out around each
    epoch, so epochs interleaved with a trainer's change neither's draws. The network goes into
    ``keep`` (tests compare it with the trainer's)."""
    cfg, device = spec.config, probe.device
    outer = rng_state()
    seed_everything(cfg.seed)
    net = probe.method.ctx.make_backbone()
    if keep is not None:
        keep.append(net)
    opt = make_optimizer(cfg, net.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=probe.scaler.is_enabled())
    loader, test = probe.train_loader, probe.test_loader
    images, labels, views = loader.images, loader.labels, loader.views
    own = rng_state()
    set_rng_state(outer)
    for epoch in range(cfg.epochs):
        outer = rng_state()
        set_rng_state(own)
        probe.sync()
        t0 = time.perf_counter()
        gen = epoch_generator(cfg.seed, epoch, device)
        perm = torch.randperm(len(labels), generator=gen, device=gen.device).to(device)
        net.train()
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x = views(images[idx], "train", gen)
            with probe.autocast():
                loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        probe.sync()
        t1 = time.perf_counter()
        net.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for start in range(0, len(test), cfg.eval_batch_size):
                x = views(test.images[start:start + cfg.eval_batch_size], "plain", gen)
                with probe.autocast():
                    correct += (net(x).argmax(1) == test.labels[start:start + cfg.eval_batch_size]).sum()
        correct.item()
        t2 = time.perf_counter()
        out.epoch.append(t2 - t0)
        out.train.append(t1 - t0)
        out.evaluation.append(t2 - t1)
        out.hooks.append(0.0)
        own = rng_state()
        set_rng_state(outer)
        yield


# --- measurement 1: trainer against the bare loop ------------------------------------------------------


def trainer_vs_bare(request: dict[str, Any], repeats: int, tmp: Path) -> dict[str, float]:
    """Repeats of the trainer (CE) with the bare loop's epochs interleaved one by one (the bare
    epoch first in every other repeat); medians of the per-epoch seconds after the first epoch,
    images per second of training, the ratios."""
    spec = perf_spec(request, tmp)
    cfg = spec.config
    if cfg.epochs < 2:
        raise UsageError(f"--epochs {cfg.epochs}: perf needs at least 2 (the first epoch is not timed)")
    probe = Trainer(spec, new_run_dir(tmp, "probe"), tracker=MemoryTracker()).build()
    if not hasattr(probe.train_loader, "images"):
        raise UsageError(f"data set {cfg.dataset!r} is read from files; perf's bare loop needs an in-memory data "
                         "set (fashion-mnist, cifar10, synthetic, ...)")
    n = len(probe.train_loader)
    log(f"perf: CE, {cfg.dataset}, {cfg.backbone}, {n} training images, batch {cfg.batch_size}, "
        f"{probe.data.image_size} px, {cfg.epochs} epochs (first not timed) x {repeats} repeats, device "
        f"{probe.device}, amp {'on' if probe.amp else 'off'} ({str(probe.amp_dtype).removeprefix('torch.')}, "
        f"loss scaling {'on' if probe.scaler.is_enabled() else 'off'}), channels-last "
        f"{'on' if probe.channels_last else 'off'}, compile {cfg.compile}, fused {cfg.fused}, {cfg.optimizer}, "
        f"{torch.get_num_threads()} threads" + ("" if have_mlflow() else "; MLflow not installed: no record"))
    rows: dict[str, list[EpochTimes]] = {"bare": [], "trainer": []}
    for r in range(repeats):
        # epoch by epoch, the bare loop's epoch first in every other repeat: on the 2-core
        # reference machine the same loop's epochs drift by 10-20% over minutes, so whole runs
        # one after the other (trainer / bare 0.93-1.14 between suites) compare the machine's
        # moods, not the code
        bare = EpochTimes()
        epochs = bare_epochs(spec, probe, bare)
        if r % 2:
            next(epochs)
        rows["trainer"].append(run_trainer(spec, new_run_dir(tmp, f"t{r}"), between=lambda e=epochs: next(e, None)))
        for _ in epochs:  # none left unless the trainer stopped early
            pass
        rows["bare"].append(bare)
        log(f"  repeat {r + 1}: trainer {statistics.median(rows['trainer'][-1].epoch[1:]):.3f} s/epoch, "
            f"bare {statistics.median(rows['bare'][-1].epoch[1:]):.3f} s/epoch")
    res = {}
    for kind, runs in rows.items():
        for part in ("epoch", "train", "evaluation", "hooks", "rest"):
            res[f"{kind}_{part}_s"] = statistics.median(t for run in runs for t in getattr(run, part)[1:])
        res[f"{kind}_images_per_s"] = n / res[f"{kind}_train_s"]
    res["ratio_epoch"] = res["trainer_epoch_s"] / res["bare_epoch_s"]
    res["ratio_train"] = res["trainer_train_s"] / res["bare_train_s"]
    # the loop alone: the trainer's epoch less what a bare loop has no counterpart for
    res["ratio_loop"] = (statistics.median(t for run in rows["trainer"] for t in run.loop[1:])
                         / res["bare_epoch_s"])
    return res


def print_trainer_vs_bare(res: dict[str, float], title: str = "") -> None:
    """Medians of each part over the timed epochs (so the parts need not add up exactly)."""
    head = f"{title}: " if title else ""
    for kind in ("trainer", "bare"):
        name = "trainer" if kind == "trainer" else "bare loop"
        more = (f"; hooks {res[kind + '_hooks_s']:.3f} s, checkpoint and record {res[kind + '_rest_s']:.3f} s"
                if kind == "trainer" else "")
        print(f"{head}{name}: {res[kind + '_epoch_s']:.3f} s/epoch (training {res[kind + '_train_s']:.3f} s, "
              f"{res[kind + '_images_per_s']:.0f} images/s; evaluation {res[kind + '_evaluation_s']:.3f} s{more})")
    print(f"{head}ratio trainer/bare: {res['ratio_epoch']:.3f} per epoch, {res['ratio_train']:.3f} training only, "
          f"{res['ratio_loop']:.3f} without the checkpoint and record")


# --- measurement 2: methods side by side ------------------------------------------------------------


@dataclass
class MethodTimes:
    method: str
    times: EpochTimes
    main: str = ""  # the label of the epochs measured
    epoch_s: float = 0.0
    train_s: float = 0.0


def summarise(method: str, times: EpochTimes) -> MethodTimes:
    """Mean seconds over the epochs of the method's last phase, its first epoch left out when
    every epoch is of that phase (CE, ELR: the first epoch carries the warm-up of the run)."""
    main = times.labels[-1]
    picked = [i for i, label in enumerate(times.labels) if label == main]
    if picked[0] == 0 and len(picked) > 1:
        picked = picked[1:]
    return MethodTimes(method, times, main, statistics.fmean(times.epoch[i] for i in picked),
                       statistics.fmean(times.train[i] for i in picked))


def time_methods(request: dict[str, Any], methods: list[str], tmp: Path) -> list[MethodTimes]:
    """Each method through the trainer (its smoke options: every phase in a few epochs), after
    one untimed CE epoch on the same data and backbone."""
    from bench.training.catalogue import method_class

    for name in methods:
        method_class(name)  # an unknown name fails before anything runs
    warm = perf_spec({**request, "epochs": 1}, tmp)
    run_trainer(warm, new_run_dir(tmp, "warm-up"))
    results = []
    for name in methods:
        spec = perf_spec(request, tmp, name, dict(method_class(name).smoke_options))
        times = run_trainer(spec, new_run_dir(tmp, name))
        results.append(summarise(name, times))
        log(f"  {name}: " + ", ".join(f"{label} {t:.2f} s" for label, t in zip(times.labels, times.epoch,
                                                                               strict=True)))
    return results


def print_methods(results: list[MethodTimes], title: str = "") -> None:
    """One row per method: its measured phase, epoch and training seconds, the ratios."""
    head = f"{title}: " if title else ""
    from bench.training.catalogue import method_class

    # the methods that declare themselves a time reference (Method.time_reference: CE, DivideMix)
    refs = {r.method: r for r in results if method_class(r.method).time_reference}
    for r in results:
        ratios = "".join(f", {r.epoch_s / ref.epoch_s:.3f} x {name} per epoch "
                         f"({r.train_s / ref.train_s:.3f} x training)" for name, ref in refs.items())
        phases = "; ".join(f"epoch {i + 1} {label}: {t:.3f} s (train {tr:.3f}, hooks {h:.3f}, eval {ev:.3f})"
                           for i, (label, t, tr, h, ev) in enumerate(zip(
                               r.times.labels, r.times.epoch, r.times.train, r.times.hooks, r.times.evaluation,
                               strict=True)))
        print(f"{head}{r.method}: {r.epoch_s:.3f} s/epoch in {r.main} (training {r.train_s:.3f} s){ratios}")
        print(f"{head}  {r.method} by epoch: {phases}")


# --- measurement 3: the strong view's share of a stage-2 step -----------------------------------------


def figure_methods(figure: str) -> list[str]:
    """The methods in ``figure`` ("methods", "strong"), in name order: those whose
    ``perf_figures`` name it (:class:`methods.base.Method`). Imports every method module (a
    second): only the suites and ``--strong`` ask."""
    from bench.training.catalogue import catalogue, method_class

    return [name for name in catalogue().methods.names() if figure in method_class(name).perf_figures]


def strong_share(request: dict[str, Any], tmp: Path, steps: int = 10, method: str | None = None) -> dict[str, float]:
    """Milliseconds per batch of the strong view and of a whole step of ``method`` (default: the
    first that declares the "strong" figure: wrongevent) in the epoch it declares
    (``perf_step_epoch``: wrongevent's stage 2) (its views made, forward, backward, optimiser
    step), median of ``steps`` after one untimed, for each RandAugment dispatch; the view's
    share of the step."""
    from bench.common import augment
    from bench.training.catalogue import method_class

    method = method or figure_methods("strong")[0]
    cls = method_class(method)
    step_epoch = cls.perf_step_epoch
    spec = perf_spec({**request, "epochs": step_epoch + 1}, tmp, method, dict(cls.smoke_options))
    if DATASETS.get(spec.config.dataset).on_disk:
        raise UsageError(f"--strong: data set {spec.config.dataset!r} is read from files; the strong view's share "
                         "is measured on an in-memory data set (synthetic, cifar10, ...)")
    trainer = Trainer(spec, new_run_dir(tmp, "strong"), tracker=MemoryTracker()).build()
    for epoch in range(step_epoch):  # the epochs before (IDO: stage 1, then the switch to stage 2)
        trainer.run_epoch(epoch)
    m, cfg = trainer.method, trainer.config
    gen = trainer.enter_epoch(step_epoch)
    m.on_epoch_start(step_epoch)
    phase = m.phases(step_epoch)[0]
    loader, views, device = trainer.train_loader, m.views(step_epoch), trainer.device
    index = torch.arange(min(cfg.batch_size, len(loader)), device=device)
    res: dict[str, float] = {}
    for dispatch in ("subset", "batched"):
        with augment.use_dispatch(dispatch):
            view_ms = _median_ms(lambda: loader.views(loader.images[index], "strong", gen), trainer, steps)
            step_ms = _median_ms(lambda: trainer.step(loader.batch(index, views, gen), step_epoch, phase), trainer,
                                 steps)
        res[f"{dispatch}_view_ms"], res[f"{dispatch}_step_ms"] = view_ms, step_ms
        res[f"{dispatch}_share"] = view_ms / step_ms
    res["batch"], res["image_size"] = float(len(index)), float(trainer.data.image_size)
    return res


def _median_ms(fn: Any, trainer: Trainer, steps: int) -> float:
    times = []
    for i in range(steps + 1):
        trainer.sync()
        t0 = time.perf_counter()
        fn()
        trainer.sync()
        if i:  # the first call is not timed
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def print_strong(res: dict[str, float], title: str = "") -> None:
    head = f"{title}: " if title else ""
    for dispatch in ("subset", "batched"):
        print(f"{head}strong view ({dispatch} dispatch), batch {res['batch']:.0f} at {res['image_size']:.0f} px: "
              f"{res[dispatch + '_view_ms']:.2f} ms of a {res[dispatch + '_step_ms']:.2f} ms stage-2 step "
              f"({100 * res[dispatch + '_share']:.1f}%)")


# --- measurement 4: on disk -------------------------------------------------------------------------


def on_disk(request: dict[str, Any], tmp: Path) -> bool:
    """Is the request's data set (after its preset) read from image files?"""
    return DATASETS.get(perf_spec(request, tmp).config.dataset).on_disk


def disk_spec(request: dict[str, Any], batches: int, tmp: Path) -> RunSpec:
    """``request`` for CE; a data set that samples its epoch (Clothing1M) samples ``batches``
    batches of images unless ``--set samples_per_epoch=`` (or the preset) says otherwise."""
    spec = perf_spec(request, tmp)
    ds_cls = DATASETS.get(spec.config.dataset)
    if "samples_per_epoch" in option_names(ds_cls) and spec.config.dataset_options.get("samples_per_epoch") is None:
        spec = perf_spec(request, tmp, extra_sets={"samples_per_epoch": str(batches * spec.config.batch_size)})
    return spec


def disk_figures(request: dict[str, Any], batches: int, tmp: Path, steps: int | None = None) -> DiskFigures:
    """The on-disk rates of ``request`` (:func:`bench.drivers.perf_disk.measure_disk`) on a
    trainer of its own, its workers ended after."""
    spec = disk_spec(request, batches, tmp)
    cfg = spec.config
    if cfg.epochs < 2:
        raise UsageError(f"--epochs {cfg.epochs}: perf needs at least 2 (the first epoch is not timed)")
    trainer = Trainer(spec, new_run_dir(tmp, "disk"), tracker=MemoryTracker()).build()
    try:
        sampled = trainer.config.dataset_options.get("samples_per_epoch")
        log(f"perf on disk: CE, {cfg.dataset} ({len(trainer.train_loader)} training images"
            + (f", {sampled} sampled per epoch" if sampled else "") + f"), {cfg.backbone}, {trainer.data.image_size} "
            f"px, batch {cfg.batch_size}, up to {batches} batches, decode {cfg.decode}, "
            f"{plural(trainer.data.pool.workers, 'worker')}, device {trainer.device}")
        return measure_disk(trainer, batches, log, steps)
    finally:
        trainer.close()


# --- suites ------------------------------------------------------------------------------------------


# the two shapes measured on an H200 before: DivideMix's CIFAR protocol (PreAct ResNet-18, 32 px, batch 64, SGD) and
# the IDO paper's (ResNet-50, no pretrained weights, batch 128, 224 px: 32-px images resized on the
# device per batch, as measured there)
SYNTH_32 = ["train_size=10000", "test_size=2000"]
SYNTH_224 = ["train_size=4096", "test_size=1024"]
PREACT_32 = {"dataset": "synthetic", "backbone": "preact_resnet18", "batch_size": 64, "optimizer": "sgd",
             "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "noise": "sym", "noise_rate": 0.4}
RESNET50_224 = {**PREACT_32, "backbone": "timm:resnet50", "batch_size": 128, "image_size": 224}


def suite_requests(name: str, base: dict[str, Any]) -> list[tuple[str, dict[str, Any], tuple[str, ...]]]:
    """(title, request, the measurements beyond trainer / bare loop) of each shape of a suite;
    ``base`` (the command line) may change the device, compile and fused flags, the epochs."""
    keep = {k: v for k, v in base.items() if k in ("device", "compile", "fused", "amp", "channels_last", "epochs")}
    if name == "gpu":
        first = {**PREACT_32, "sets": SYNTH_32, **keep}
        return [("preact_resnet18 32 px batch 64", first, ("strong", "methods")),
                ("resnet50 224 px batch 128", {**RESNET50_224, "sets": SYNTH_224, **keep}, ("strong", "methods")),
                ("preact_resnet18 32 px batch 64, fused optimiser", {**first, "fused": "on"}, ())]
    # the CPU: a PreAct ResNet-18 step of 64 images takes about 2 s on 2 cores, hence 2,048 images
    # (32 steps, 75 s an epoch): with 512 (8 steps) one epoch's spread was as large as the gap measured
    return [("smallcnn fashion-mnist batch 128", {"dataset": "fashion-mnist", **keep}, ("strong",)),
            ("preact_resnet18 synthetic 32 px batch 64",
             {**PREACT_32, "sets": ["train_size=2048", "test_size=256"], **keep}, ("strong",))]


# on-disk shapes (issue 25): synthetic Clothing1M trees (datasets/synth.py) of (training images,
# WxH) per suite, written into the suite's temporary folder with the machine's cores: 1,200 on
# the CPU (about 30 s on 2 cores), 20,000 on a GPU machine, so that 40 batches of 64 are
# 2,560 distinct images and the methods' epochs sample from a data set larger than themselves
DISK_TREES = {"disk": (1200, "500x400"), "gpu": (20_000, "500x400")}
DISK_SMALLCNN = {"dataset": "clothing1m", "backbone": "smallcnn", "image_size": 64, "batch_size": 64}
DISK_RESNET50 = {"dataset": "clothing1m", "backbone": "timm:resnet50", "image_size": 224, "batch_size": 64}
DISK_TEST_IMAGES = 28  # each epoch's evaluation (2 per class): not what is measured, kept short
# (loader batches, timed steps: None = on all of them) per shape. The CPU's ResNet-50: a step of
# 64 images at 224 px took 23 s on the one thread of the 2-core reference machine (55-85 s while
# other jobs shared it), so 8 loader batches (4 per worker; a second of decoding), 1 timed step,
# and 1-batch epochs (64 sampled: 56 images, 4 per class): 4 steps in all, the suite about 2
# minutes. The GPU's: 40 batches, epochs of 2,560 (40 x 64), the methods' of 2,048
DISK_BATCHES: dict[str, tuple[int, int | None]] = {"smallcnn": (40, None), "resnet50-cpu": (8, 1),
                                                    "resnet50-gpu": (40, None)}
DISK_R50_CPU_SAMPLES = 64
GPU_METHOD_SAMPLES = 2048


def disk_shapes(name: str, base: dict[str, Any], root: Path
                ) -> list[tuple[str, dict[str, Any], tuple[int, int | None]]]:
    """(title, request, (batches, steps)) of each on-disk shape of suite ``name`` on the tree at
    ``root``; ``base`` may change the device, compile, fused and AMP flags, the epochs and the
    loader's workers."""
    keep = {k: v for k, v in base.items()
            if k in ("device", "compile", "fused", "amp", "channels_last", "epochs", "workers", "prefetch",
                     "pin_memory")}
    n = DISK_TREES[name][0]
    common = {"data_root": str(root), "test_subset": min(DISK_TEST_IMAGES, max(n // 10, 14)), **keep}
    if name == "gpu":
        r50, k = {**DISK_RESNET50, **common}, DISK_BATCHES["resnet50-gpu"]
        return [(f"on disk resnet50 224 px batch 64, decode {d}", {**r50, "decode": d}, k) for d in ("cpu", "gpu")]
    return [("on disk smallcnn 64 px batch 64", {**DISK_SMALLCNN, **common}, DISK_BATCHES["smallcnn"]),
            ("on disk resnet50 224 px batch 64",
             {**DISK_RESNET50, **common, "sets": [f"samples_per_epoch={DISK_R50_CPU_SAMPLES}"]},
             DISK_BATCHES["resnet50-cpu"])]


def run_disk_shapes(name: str, base: dict[str, Any], tmp: Path) -> None:
    """The suite's tree written (its generation time printed), then each on-disk shape; on the
    GPU suite, CE / DivideMix / IDO epochs on the tree too. ``--decode gpu`` is skipped, said so,
    where there is no CUDA device."""
    n, size = DISK_TREES[name]
    root = tmp / "tree"
    print(make_tree(root, n, size, log))
    sys.stdout.flush()
    shapes = disk_shapes(name, base, root)
    for i, (title, request, (batches, steps)) in enumerate(shapes):
        if request.get("decode") == "gpu" and (request.get("device") == "cpu" or not torch.cuda.is_available()):
            print(f"{title}: skipped (--decode gpu needs a CUDA device)")
            continue
        sub = tmp / f"disk{i}"
        sub.mkdir()
        print_disk(disk_figures(request, batches, sub, steps), title)
        sys.stdout.flush()
    if name == "gpu":
        title, request, _ = shapes[0]
        sub = tmp / "disk-methods"
        sub.mkdir()
        request = {**request, "sets": [f"samples_per_epoch={GPU_METHOD_SAMPLES}"]}
        print_methods(time_methods(request, figure_methods("methods"), sub),
                      title.removesuffix(", decode cpu") + f", {GPU_METHOD_SAMPLES} sampled per epoch")
        sys.stdout.flush()


def run_suite(name: str, base: dict[str, Any], repeats: int, tmp: Path) -> None:
    """Every figure of the suite, shape by shape, printed as it comes."""
    t0 = time.perf_counter()
    if name == "disk":
        run_disk_shapes(name, base, tmp)
        print(f"suite {name}: {time.perf_counter() - t0:.0f} s")
        return
    for i, (title, request, more) in enumerate(suite_requests(name, base)):
        sub = tmp / f"shape{i}"
        sub.mkdir()
        print_trainer_vs_bare(trainer_vs_bare(request, repeats, sub / "a"), title)
        sys.stdout.flush()
        if "strong" in more:
            print_strong(strong_share(request, sub / "s"), title)
        if "methods" in more:
            print_methods(time_methods(request, figure_methods("methods"), sub / "m"), title)
        sys.stdout.flush()
    if name == "gpu":
        run_disk_shapes(name, base, tmp)
    print(f"suite {name}: {time.perf_counter() - t0:.0f} s")


# --- the command ------------------------------------------------------------------------------------


def run_perf(args: argparse.Namespace, request: dict[str, Any]) -> int:
    """``bench perf``: ``request`` holds the command line's run options."""
    if args.repeats < 1:
        raise UsageError(f"--repeats {args.repeats}: must be at least 1")
    batches = getattr(args, "batches", 40)
    if batches < 1:
        raise UsageError(f"--batches {batches}: must be at least 1")
    for key in ("tracking_uri", "experiment", "out"):
        request.pop(key, None)
    request.setdefault("epochs", 3)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for sub in ("a", "m", "s", "d"):
            (tmp / sub).mkdir()
        if args.suite:
            run_suite(args.suite, request, args.repeats, tmp)
        elif args.methods:
            print_methods(time_methods(request, [m.strip() for m in args.methods.split(",") if m.strip()], tmp / "m"))
        elif args.strong:
            print_strong(strong_share(request, tmp / "s"))
        elif on_disk(request, tmp / "d"):
            print_disk(disk_figures(request, batches, tmp / "d"))
        else:
            print_trainer_vs_bare(trainer_vs_bare(request, args.repeats, tmp / "a"))
    return 0

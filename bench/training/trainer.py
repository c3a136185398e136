"""The trainer: devices, precision, loops, evaluation, timing, checkpoints, resume.

One :class:`Trainer` runs one :class:`~bench.training.resolve.RunSpec` end to end; other code
calls :meth:`Trainer.build` (data and method, nothing written) and :meth:`Trainer.run`, and
``bench perf`` times single steps with :meth:`Trainer.enter_epoch`, :meth:`Trainer.step`,
:meth:`Trainer.autocast` and :meth:`Trainer.sync`. Progress (the backbone's weights, the setup
time, one line per epoch) goes to the ``bench.training`` logger at INFO: the command line
writes it to stderr, a library caller sees it only where it configures logging.
Methods (see :mod:`methods.base`) supply models, a step and their guesses of the clean samples;
the trainer does everything around them, identically for every method, so that accuracy and
time differences come from the methods alone. The data come from :mod:`bench.training.assemble`
and the MLflow record is :mod:`bench.training.runrecord`. Per step the trainer does no
host-device synchronisation: running sums stay on the device and are read once per epoch.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.backbones import create_backbone, ensure_weights
from bench.common.errors import UsageError
from bench.common.options import build_options
from bench.training.assemble import Assembly, assemble, draw_pool
from bench.training.catalogue import method_class
from bench.training.config import RunConfig, step_milestones
from bench.training.data import Prefetcher, epoch_generator
from bench.training.device import peak_memory_mb, resolve_device
from bench.training.diagnostics import detection_metrics, transition_error
from bench.training.disk import DiskLoader
from bench.training.environment import NOT_RECORDED, TAG_HARDWARE, environment, joined, summary_line
from bench.training.health import (
    COLLAPSED,
    TAG_DETAIL,
    TAG_HEALTH,
    CollapseState,
    Diverged,
    NonFiniteWatch,
    collapse_share,
    prediction_stats,
)
from bench.training.resolve import CHECKPOINT, RunSpec
from bench.training.runrecord import RunRecord
from bench.training.tracking import new_tracker
from datasets.noise import NoiseSpec, expected_transition, transition_matrix
from methods.base import Generators, Method, MethodContext, Phase, StepOutput

LOG = logging.getLogger("bench.training")


class Stopped(Exception):
    """The run stopped before its last epoch (``--stop-after``); its checkpoint stands."""


class Pruned(Stopped):
    """The epoch callback (a study's pruner) stopped the run early."""


def new_run_dir(spec: RunSpec) -> Path:
    """``<out>/<run name>-<time>-<id>``: listed by method and setting, unique per start."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(spec.place.out) / f"{spec.config.run_name}-{stamp}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """The states :func:`rng_state` saved; they are CPU byte tensors whatever device the
    checkpoint was loaded onto (torch takes no other)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def make_optimizer(cfg: RunConfig, params: Any) -> torch.optim.Optimizer:
    """The run's optimiser. ``--fused on``: one kernel per step for all parameters (torch's
    ``fused=True``, CPU and CUDA); off: torch's default (``foreach`` on CUDA). A fused optimiser
    also takes GradScaler's inf check into its kernel, which spares the host sync that
    ``GradScaler.step`` otherwise does every step under fp16 AMP."""
    extra = {"fused": True} if cfg.fused == "on" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **extra)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def compile_backbone(net: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``net`` compiled in place (``nn.Module.compile``: the module, its attributes and its
    ``state_dict`` keys stay as they are, so methods and checkpoints see no difference) with
    torch.compile ``mode``; ``off`` leaves it eager. A copy made by ``copy.deepcopy`` would call
    the original's compiled function: methods build each network from ``ctx.make_backbone()``
    instead (methods/ema.py)."""
    if mode != "off":
        net.compile(mode=None if mode == "default" else mode)
    return net


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, epochs: int) -> Any:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.scheduler.startswith("step:"):
        return torch.optim.lr_scheduler.MultiStepLR(opt, step_milestones(cfg.scheduler, epochs), gamma=0.1)
    return None


@dataclass
class History:
    """What the run has done so far; saved in every checkpoint."""

    epochs_done: int = 0
    # the metrics of the last finished epoch: logged after the checkpoint that holds them, and
    # logged again on resume if a kill came in between
    last_metrics: dict[str, float] = field(default_factory=dict)
    test_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)  # with --val-fraction
    wall_clock_s: float = 0.0
    # the hardware label of each machine the run ran on, in order (bench.training.environment)
    hardware: list[str] = field(default_factory=list)
    collapse: dict[str, Any] = field(default_factory=dict)  # a CollapseState (bench.training.health)

    @property
    def best(self) -> tuple[float, int]:
        i = int(np.argmax(self.test_acc))
        return self.test_acc[i], i + 1


class EpochStats:
    """Running sums of a training epoch, kept on the device (one sync per epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0
        self.n_acc = 0

    def _add(self, key: str, value: torch.Tensor) -> None:
        v = value.detach().float()
        self.sums[key] = self.sums[key] + v if key in self.sums else v

    def add(self, out: Any, batch: dict[str, torch.Tensor]) -> None:
        bs = batch["label"].shape[0]
        self.n += bs
        self._add("train_loss", out.loss * bs)
        if out.logits is not None:
            self.n_acc += bs
            self._add("train_correct", (out.logits.argmax(1) == batch["label"]).sum())
        for k, v in out.terms.items():
            self._add(k, v * bs)

    def result(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).tolist()
        res = {}
        for k, v in zip(keys, values, strict=True):
            if k == "train_correct":
                res["train_acc"] = v / max(self.n_acc, 1)
            else:
                res[k] = v / max(self.n, 1)
        return res


class Trainer:
    """Runs one :class:`RunSpec`: :meth:`build` assembles the data and the method (reading,
    never writing), :meth:`run` trains, evaluates, checkpoints and records; it returns the
    summary dict the command line prints."""

    def __init__(self, spec: RunSpec, run_dir: Path, *, stop_after: int | None = None, epoch_callback: Any = None,
                 tags: dict[str, str] | None = None, started: float | None = None, tracker: Any = None) -> None:
        # a copy of its own: build() fills in the options the data set and the method resolve, and
        # the caller's spec (a sweep's or study's base, bench.run's) must stay as it was given
        self.spec = copy.deepcopy(spec)
        self.config: RunConfig = self.spec.config
        self.place = self.spec.place
        self.run_dir = run_dir
        self.stop_after = stop_after
        # called after each epoch's checkpoint with (epoch, metrics); True stops the run
        # (a study's pruner); the run ends with status "pruned", its MLflow run KILLED
        self.epoch_callback = epoch_callback
        self.extra_tags = dict(tags or {})  # e.g. mlflow.parentRunId of a study trial
        # perf_counter() when the command started: setup_time_s counts from there (imports
        # included); None: from run()
        self.started = started
        # the MLflow logger: a TrackerProcess the caller started early (its imports overlap
        # ours), or one started by run(); anything with Tracker's methods (open, start, ...)
        self.tracker = tracker
        self.progress = sys.stderr.isatty() if self.place.progress is None else self.place.progress
        self.device = resolve_device(self.place.device)
        # run health (bench/training/health.py): the non-finite loss watch, skipped steps, collapse
        self.watch = NonFiniteWatch(self.device)
        self.skipped_steps, self._epoch, self._top_class = 0, 0, 0
        self._collapse_at: float | None = None
        on_cuda = self.device.type == "cuda"
        self.amp = self.config.amp == "on" or (self.config.amp == "auto" and on_cuda)
        # fp16 with loss scaling on CUDA; bfloat16 is the CPU form of autocast
        self.amp_dtype = torch.float16 if on_cuda else torch.bfloat16
        self.channels_last = self.config.channels_last != "off"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and on_cuda)
        self.pool: torch.Tensor | None = None  # this epoch's sample of training indices, if any
        self._gen = epoch_generator(self.config.seed, 0, self.device)  # the current epoch's data generator
        self._gens = self._method_generators(0)
        self.data: Assembly | None = None
        self.notes: list[str] = []  # lines for stderr once the build has succeeded (bad input: one line)
        self._transition: np.ndarray | None = None

    # --- the data, as the loops and tests see it ----------------------------------------------
    @property
    def train_loader(self) -> Any:
        return self.data.train

    @property
    def test_loaders(self) -> dict[str, Any]:
        return self.data.tests

    @property
    def test_loader(self) -> Any:
        return self.data.tests[""]

    @property
    def val_loader(self) -> Any:
        return self.data.val

    @property
    def dataset(self) -> Any:
        return self.data.dataset

    @property
    def train_set(self) -> Any:
        return self.data.train_set

    @property
    def noise(self) -> Any:
        return self.data.noise

    # --- setup ------------------------------------------------------------------------------
    def build(self) -> Trainer:
        """Data and method, the method's options resolved into the trainer's copy of the
        configuration (what is logged and saved; the caller's spec is left alone); nothing is
        written (the run folder gets only the method's artifact folder)."""
        cfg = self.config
        seed_everything(cfg.seed)
        self.extra_tags["weights"] = self._initial_weights()
        method_cls = method_class(cfg.method)  # imported first: it registers its own views
        self.data = assemble(cfg, self.place, self.device, self.channels_last)
        cfg.dataset_options = self.data.dataset.resolved_options()
        options = build_options(method_cls, {k: str(v) for k, v in cfg.method_options.items()})
        self.method: Method = method_cls(options, self._context())
        self.method.setup()
        cfg.method_options = self.method.resolved_options()  # the values in use are what gets logged
        return self

    def _initial_weights(self) -> str:
        """The backbone's starting weights, said on stderr and recorded (the ``weights`` tag).
        timm's pretrained weights are fetched here, before any data is read, so a download that
        fails (or, offline, a file not cached) fails first."""
        cfg = self.config
        where = ""
        if not cfg.pretrained or not cfg.backbone.startswith("timm:"):  # resolve refuses pretrained others
            what = "random initialisation"
        elif cfg.weights:
            what = f"file:{cfg.weights}"
        else:
            src, path, fresh = ensure_weights(cfg.backbone.removeprefix("timm:"), self.place.offline)
            what = src.provenance(path)
            where = f" ({'downloaded to' if fresh else 'from the cache:'} {path})"
        self.notes.append(f"backbone {cfg.backbone}: {what}{where}")  # said once the run has started
        return what

    def draw_pool(self, epoch: int) -> torch.Tensor | None:
        """This epoch's class-balanced sample of training indices (Clothing1M's epoch), or None."""
        return draw_pool(self.data, self.config.seed, epoch, self.device)

    def _method_generators(self, epoch: int) -> Generators:
        """The method's generators of ``epoch``: a stream apart from the data's (order and
        augmentation), a pure function of (seed, epoch), so resume draws the same."""
        state = np.random.SeedSequence([self.config.seed, epoch, 0x4D]).generate_state(2)
        gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu")
        gen.manual_seed(int(state[0]))
        return Generators(torch=gen, numpy=np.random.default_rng(int(state[1])))

    def _context(self) -> MethodContext:
        cfg, ds = self.config, self.data.dataset
        self.prefetcher = self._prefetcher()
        art = self.run_dir / "artifacts"
        art.mkdir(parents=True, exist_ok=True)

        def backbone() -> torch.nn.Module:
            net = create_backbone(cfg.backbone, ds.num_classes, ds.channels, self.data.image_size,
                                  cfg.pretrained, cfg.weights, self.place.offline).to(self.device)
            net = net.to(memory_format=torch.channels_last) if self.channels_last else net
            return compile_backbone(net, cfg.compile)

        return MethodContext(
            num_classes=ds.num_classes, num_train=len(self.data.train_set), device=self.device, epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            noise_rate=None if ds.real_noise else cfg.noise_rate, dataset=ds.name, noise=cfg.noise,
            pretrained=cfg.pretrained,
            make_backbone=backbone,
            make_optimizer=lambda params: make_optimizer(cfg, params),
            make_scheduler=lambda opt, epochs: make_scheduler(cfg, opt, epochs),
            predict_train=self.predict_train,
            fetch=lambda index, views: self.train_loader.batch(index.to(self.device), views, self._gen),
            prefetch=self.prefetcher,
            given_labels=self.train_loader.labels, artifact_dir=art,
            generators=lambda: self._gens, epoch_pool=lambda: self.pool,
            noise_transition=lambda: None if ds.real_noise else expected_transition(
                ds.num_classes, NoiseSpec(cfg.noise, cfg.noise_rate, cfg.noise_seed), asym_map=ds.asym_map),
        )

    def _prefetcher(self) -> Prefetcher:
        """Side streams' batches (DivideMix's unlabeled ones): on-disk, made ahead by the workers
        from index batches drawn on the host; in memory, made when asked on the device."""
        loader = self.train_loader
        return Prefetcher(torch.device("cpu") if isinstance(loader, DiskLoader) else self.device, loader.prefetch)

    # --- evaluation ---------------------------------------------------------------------------
    def autocast(self) -> Any:
        """The run's mixed precision as a context (a no-op without AMP): what the trainer's steps
        and evaluation run under, for a loop that must do the same work (``bench perf``'s bare loop)."""
        if not self.amp:
            return contextlib.nullcontext()  # cheaper than a disabled autocast, once per step
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def _logits(self, fn: Any, loader: Any, indices: torch.Tensor | None = None,
                view: str = "plain") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and indices of the samples a pass over ``loader`` returns, in order (on-disk
        loaders drop images that fail to decode); an augmented ``view`` draws from the run's
        generators of the epoch, so a resumed run draws the same."""
        outs, idx = [], []
        gen = None if view == "plain" else self._gens.torch
        for batch in loader.iterate((view,), gen=gen, shuffle=False, indices=indices,
                                    batch_size=self.config.eval_batch_size):
            with self.autocast():
                outs.append(fn(batch[view]).float())
            idx.append(batch["index"])
        return torch.cat(outs), torch.cat(idx)

    def predict_train(self, model: torch.nn.Module, indices: torch.Tensor | None = None,
                      view: str = "plain") -> torch.Tensor:
        """Logits of ``model`` (in eval mode) for the training samples ``indices`` (default: all),
        in that order, of the ``view`` (default plain; M-Correction tracks its losses on the
        training augmentation, ``"train"``). A sample whose image failed to decode gets all-zero
        logits."""
        was = model.training
        model.eval()
        try:
            logits, got = self._logits(model, self.train_loader, indices, view)
        finally:
            model.train(was)
        want = torch.arange(len(self.train_loader), device=self.device) if indices is None else indices.to(self.device)
        if len(got) == len(want):
            return logits
        full = torch.zeros(len(self.train_loader), logits.shape[1], device=self.device)
        full[got] = logits
        return full[want]

    def evaluate(self) -> dict[str, float]:
        """Accuracy on each test set: ``test_acc``, and ``test_acc_<name>`` for extra ones."""
        self.method.train_mode(False)
        out = {}
        for name, loader in self.test_loaders.items():
            logits, idx = self._logits(self.method.predict, loader)
            if not bool(torch.isfinite(logits).all()):  # weights gone to NaN or inf: diverged
                raise Diverged(self.method.name, self._epoch + 1, None, "logits in evaluation")
            pred = logits.argmax(1)
            # over the images that decoded (on-disk data); the skipped ones are counted apart
            acc = (pred == loader.labels[idx]).float().mean().item()
            out["test_acc" + (f"_{name}" if name else "")] = acc
            if not name:  # collapse: how much of the test set goes to one class (bench.training.health)
                out["pred_top_share"], out["pred_entropy"], self._top_class = prediction_stats(
                    pred, self.data.dataset.num_classes)
        if self.val_loader is not None:  # the held-out part of the noisy training set
            logits, idx = self._logits(self.method.predict, self.val_loader)
            pred = logits.argmax(1)
            out["val_acc"] = (pred == self.val_loader.labels[idx]).float().mean().item()  # given labels
            if self.val_loader.clean is not None:  # diagnostics only: a user of real noise has no truth
                out["val_acc_clean"] = (pred == self.val_loader.clean[idx]).float().mean().item()
        self.method.train_mode(True)
        return out

    def detection(self, epoch: int) -> dict[str, float]:
        """The noise-detection metrics of the method's guesses after ``epoch``, where the truth
        is known (the method never sees it)."""
        is_clean = self.data.is_clean
        detections = self.method.detections(epoch)
        out = {} if is_clean is None or not detections else detection_metrics(detections, is_clean.cpu().numpy())
        estimate = self.method.transition()
        if estimate is not None and self.train_loader.clean is not None:  # T-estimating methods
            out["t_error"] = transition_error(estimate, self._realised_transition())
        return out

    def _realised_transition(self) -> np.ndarray:
        """The training set's realised transition matrix (rows: true class), from the truth the
        trainer keeps."""
        if self._transition is None:
            loader = self.train_loader
            self._transition = transition_matrix(loader.clean.cpu().numpy(), loader.labels.cpu().numpy(),
                                                 self.data.dataset.num_classes)
        return self._transition

    # --- training ------------------------------------------------------------------------------
    def _step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Any, opts: list) -> Any:
        with self.autocast():
            out = self.method.train_step(batch, epoch, phase)
        for o in opts:
            o.zero_grad(set_to_none=True)
        if self.config.on_nonfinite == "skip-step" and not bool(torch.isfinite(out.loss.detach()).all()):
            self.skipped_steps += 1  # no backward, no update, and not in the epoch's means
            return None
        self.watch.update(out.loss)
        if not out.step:
            return out
        if not self.scaler.is_enabled():
            out.loss.backward()
            for o in opts:
                o.step()
        else:
            self.scaler.scale(out.loss).backward()
            for o in opts:
                self.scaler.step(o)
            self.scaler.update()
        self.method.after_step(phase)
        return out

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training (all the method's phases); returns epoch means."""
        m = self.method
        gen = self._gen = epoch_generator(self.config.seed, epoch, self.device)
        views = m.views(epoch)
        unnamed = [v for v in views if v not in ("train", "plain", *m.own_views)]
        if unnamed:  # a method's views are named once, in its view_sets (what bench list and --views read)
            raise ValueError(f"method {m.name} asks for views {', '.join(unnamed)}, which its view_sets "
                             f"do not name ({', '.join(m.own_views) or 'none'})")
        stats = EpochStats(self.device)
        m.train_mode(True)
        self.watch.reset()
        self.skipped_steps = 0
        self.prefetcher.live = True  # streams made from here on may start decoding at once
        try:
            self._train_phases(epoch, gen, views, stats)
        except Exception as exc:  # a method that trips over the NaNs (a mixture fit, a sampler)
            step = self.watch.first_bad()
            if step is not None:
                raise Diverged(m.name, epoch + 1, step, "training loss") from exc
            raise
        finally:
            self.prefetcher.live = False
        step = self.watch.first_bad()
        if step is not None:
            raise Diverged(m.name, epoch + 1, step, "training loss")
        result = stats.result()
        if self.config.on_nonfinite == "skip-step":
            result["skipped_steps"] = float(self.skipped_steps)
        return result

    def _train_phases(self, epoch: int, gen: torch.Generator, views: tuple[str, ...], stats: EpochStats) -> None:
        m = self.method
        phases = m.phases(epoch)  # once: a method may make per-phase state here (DivideMix's streams)
        bar = self._bar(epoch, phases)
        for phase in phases:
            if phase.select is not None:  # a selection made now, after the earlier phases
                planned = self._batches(phase)  # what the bar counted for it: every sample
                phase.indices = phase.select()
                if bar is not None:  # the bar's total as the selection makes it
                    bar.total += self._batches(phase) - planned
                    bar.refresh()
            opts = self._phase_optimizers(phase)
            indices = self.pool if phase.indices is None else phase.indices
            for batch in self.train_loader.iterate(views, gen, indices=indices, batch_size=phase.batch_size):
                out = self._step(batch, epoch, phase, opts)
                if out is not None:
                    stats.add(out, batch)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()

    def _bar(self, epoch: int, phases: list) -> Any:
        if not self.progress:
            return None
        from tqdm import tqdm

        total = sum(self._batches(p) for p in phases)
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, file=sys.stderr)

    def _batches(self, phase: Phase) -> int:
        """The batches ``phase`` visits: its indices, else the epoch's pool, else every sample
        (a phase that selects when it begins counts every sample until it has)."""
        n = len(self.train_loader) if self.pool is None else len(self.pool)
        n = n if phase.indices is None else len(phase.indices)
        return -(-n // (phase.batch_size or self.config.batch_size))

    def sync(self) -> None:
        """Wait for the work queued on the device (CUDA; nothing to wait for on the CPU): a clock
        read after it counts that work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def enter_epoch(self, epoch: int) -> torch.Generator:
        """Make ``epoch`` (from 0) the current epoch outside :meth:`run_epoch`, to run its steps
        one by one (``bench perf`` times them so): the method's generators of ``epoch`` and a
        fresh data generator of it, returned (``ctx.fetch`` draws from it, and so should the
        caller's batches). Call the method's ``on_epoch_start`` after it, as run_epoch does."""
        self._gens = self._method_generators(epoch)
        self._gen = epoch_generator(self.config.seed, epoch, self.device)
        return self._gen

    def step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        """One training step of ``phase`` exactly as the epoch loop takes it (autocast, loss
        scaling, backward, the phase's optimisers, ``after_step``), for timing steps alone."""
        return self._step(batch, epoch, phase, self._phase_optimizers(phase))

    def _phase_optimizers(self, phase: Phase) -> list[torch.optim.Optimizer]:
        """The optimisers a step of ``phase`` steps: those it names, else every one of the method's."""
        m = self.method
        return [m.optimizers[k] for k in (phase.optimizers or tuple(m.optimizers))]

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Hooks, training, detection metrics, evaluation and timing of one epoch (``epoch``
        counts from 0)."""
        t0 = time.perf_counter()
        self._epoch = epoch
        self.pool = self.draw_pool(epoch)
        self._gens = self._method_generators(epoch)
        metrics = dict(self.method.on_epoch_start(epoch))
        # the rate each optimiser trains with this epoch (schedulers step after it): the first's
        # as ``lr`` (what tables read), every other's as ``lr_<name>``
        for i, (name, opt) in enumerate(self.method.optimizers.items()):
            metrics["lr" if i == 0 else f"lr_{name}"] = opt.param_groups[0]["lr"]
        t1 = time.perf_counter()
        metrics.update(self.train_epoch(epoch))
        self.sync()
        t2 = time.perf_counter()
        metrics.update(self.method.on_epoch_end(epoch))
        metrics.update(self.detection(epoch))
        for sched in self.method.schedulers.values():
            sched.step()
        t3 = time.perf_counter()
        metrics.update(self.evaluate())
        t4 = time.perf_counter()
        if isinstance(self.train_loader, DiskLoader):  # images that failed to decode this epoch
            metrics["skipped_images"] = float(self.train_loader.skipped)
            self.train_loader.skipped = 0
            for name, ld in self.test_loaders.items():
                metrics["test_skipped_images" + (f"_{name}" if name else "")] = float(ld.skipped)
                ld.skipped = 0
        metrics.update(train_time_s=t2 - t1, eval_time_s=t4 - t3, hooks_time_s=(t1 - t0) + (t3 - t2),
                       epoch_time_s=t4 - t0)
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, history: History, run_id: str) -> None:
        ckpt = {"method": self.method.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "history": asdict(history), "run_id": run_id, "config_hash": self.config.hash()}
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, self.run_dir / CHECKPOINT)  # atomic: a kill never leaves half a file

    def read_checkpoint(self) -> dict[str, Any]:
        path = self.run_dir / CHECKPOINT
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # torch raises many types for a damaged file
            raise UsageError(f"--resume: {path} cannot be read ({type(exc).__name__}); "
                             "the run cannot be resumed, start it again") from None
        if not isinstance(ckpt, dict) or not {"method", "history", "run_id", "rng"} <= set(ckpt):
            raise UsageError(f"--resume: {path} is not a checkpoint of this harness")
        return ckpt

    def load_checkpoint(self, ckpt: dict[str, Any]) -> tuple[History, str]:
        if ckpt.get("config_hash") != self.config.hash():
            raise UsageError(f"--resume {self.run_dir}: its config.json does not match the checkpoint "
                             "(edited, or copied from another run); the run cannot be resumed")
        self.method.load_state_dict(ckpt["method"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        known = {f.name for f in fields(History)}  # checkpoints may predate a field
        return History(**{k: v for k, v in ckpt["history"].items() if k in known}), ckpt["run_id"]

    # --- the run ---------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Build (if not built yet), train every epoch left, record; the summary."""
        t_setup = self.started if self.started is not None else time.perf_counter()
        ckpt = self.read_checkpoint() if resume else None  # a damaged file fails before any work
        tracker = self.tracker if self.tracker is not None else new_tracker()
        threads = torch.get_num_threads()
        if self.place.threads is not None:  # --threads: this run's, then the caller's again
            torch.set_num_threads(self.place.threads)
        try:
            summary = self._run(tracker, ckpt, t_setup)
        except BaseException:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                self.close()
            with contextlib.suppress(Exception):
                tracker.close()
            raise
        finally:
            torch.set_num_threads(threads)
        self.close()  # the loader workers first: forked from the run, they hold its pipes
        tracker.close()
        return summary

    def close(self) -> None:
        """End the loader workers of on-disk data (they live for the run)."""
        if self.data is not None and self.data.pool is not None:
            self.data.pool.close()

    def _run(self, tracker: Any, ckpt: dict[str, Any] | None, t_setup: float) -> dict[str, Any]:
        if self.data is None:
            self.build()
        # only now: a run that fails to build (weights not found offline) leaves no store behind,
        # and a usage error found in building is the command's one line
        env = environment(self.device)
        LOG.info(summary_line(env))
        for note in self.notes:
            LOG.info(note)
        self.notes.clear()
        tracker.open(self.place.tracking_uri, self.place.experiment)
        record = RunRecord(tracker, self.spec, self.run_dir)
        if ckpt is not None:
            history, run_id = self.load_checkpoint(ckpt)
            del ckpt
            # resumed elsewhere (a requeued job on another node): the run is of both machines
            history.hardware = history.hardware or [NOT_RECORDED]
            if history.hardware[-1] != env[TAG_HARDWARE]:
                history.hardware.append(env[TAG_HARDWARE])
            env[TAG_HARDWARE] = joined(history.hardware)
            record.resume(run_id, history, {**env, **self.extra_tags})
        else:
            history = History()
            history.hardware = [env[TAG_HARDWARE]]
            run_id = record.start(self.data, self.method, {**env, **self.extra_tags})
            self.save_checkpoint(history, run_id)  # a run killed in epoch 1 can be resumed too
        setup_s = time.perf_counter() - t_setup
        LOG.info(f"setup_time_s {setup_s:.1f} (start-up, data, noise, models, MLflow)")
        try:
            self._loop(history, record, run_id)
        except KeyboardInterrupt:
            record.killed()
            raise
        except Stopped as stop:
            record.stopped("pruned" if isinstance(stop, Pruned) else "stop-after")
            return self._summary(history, run_id, status="pruned" if isinstance(stop, Pruned) else "stopped")
        except Diverged as div:
            summary = self._summary(history, run_id, status="diverged")
            summary.update(setup_time_s=setup_s, diverged=str(div))
            good = f"epoch {history.epochs_done}" if history.epochs_done else "the start"
            LOG.error(f"bench: diverged: {div}; the run stops (the checkpoint of {good}, the last good one, "
                      f"stands in {self.run_dir})")
            record.diverged(summary, history.epochs_done, str(div))
            return summary
        summary = self._summary(history, run_id, status="finished")
        summary["setup_time_s"] = setup_s
        record.finish(summary, history.epochs_done)
        return summary

    def _loop(self, history: History, record: RunRecord, run_id: str) -> None:
        for epoch in range(history.epochs_done, self.config.epochs):
            metrics = self.run_epoch(epoch)
            history.epochs_done = epoch + 1
            history.test_acc.append(metrics["test_acc"])
            if "val_acc" in metrics:
                history.val_acc.append(metrics["val_acc"])
            history.wall_clock_s += metrics["epoch_time_s"]
            history.last_metrics = metrics
            self._watch_collapse(history, record, epoch, metrics)
            record.flush()  # the epochs before this one are in the store before its checkpoint
            self.save_checkpoint(history, run_id)  # first the checkpoint, then the record of it
            record.epoch(metrics, step=epoch + 1)
            self._report(epoch, metrics)
            if self.stop_after is not None and epoch + 1 >= self.stop_after and epoch + 1 < self.config.epochs:
                raise Stopped
            if (self.epoch_callback is not None and self.epoch_callback(epoch, metrics)
                    and epoch + 1 < self.config.epochs):
                raise Pruned

    def _watch_collapse(self, history: History, record: RunRecord, epoch: int, metrics: dict[str, float]) -> None:
        """Tag a run whose test predictions sit in one class two evaluations in a row, and say
        so; the tag follows it (collapsed, or collapsed-recovered once it leaves)."""
        share = metrics.get("pred_top_share")
        if share is None:
            return
        if self._collapse_at is None:
            self._collapse_at = collapse_share(self.test_loaders[""].labels, self.data.dataset.num_classes)
        state = CollapseState(**history.collapse)
        before = state.tag()
        if state.update(epoch + 1, share, self._collapse_at):
            LOG.warning(f"warning: {self.method.name}: predictions collapsed: {share:.1%} of the test images in "
                        f"class {self._top_class} in evaluations {state.collapsed_epoch}-{epoch + 1} (collapse: "
                        f"{self._collapse_at:.1%} or more two evaluations in a row); the run goes on")
        history.collapse = asdict(state)
        if state.tag() != before:
            detail = (f"collapsed from epoch {state.collapsed_epoch}" if state.tag() == COLLAPSED else
                      f"collapsed from epoch {state.collapsed_epoch}, recovered by epoch {epoch + 1}")
            record.tags({TAG_HEALTH: state.tag(), TAG_DETAIL: detail})

    def _report(self, epoch: int, m: dict[str, float]) -> None:
        acc = f" train_acc {m['train_acc']:.4f}" if "train_acc" in m else ""
        LOG.info(f"epoch {epoch + 1}/{self.config.epochs}: train_loss {m.get('train_loss', float('nan')):.4f}{acc}"
                 f" test_acc {m['test_acc']:.4f} ({m['epoch_time_s']:.1f} s)")

    def _summary(self, history: History, run_id: str, status: str) -> dict[str, Any]:
        cfg = self.config
        best, best_epoch = history.best if history.test_acc else (float("nan"), 0)
        return {
            "run_id": run_id, "status": status, "method": cfg.method, "dataset": cfg.dataset,
            "noise": cfg.noise, "noise_rate": cfg.noise_rate, "noise_rate_realized": self.noise.rate_realized,
            "noise_seed": cfg.noise_seed, "seed": cfg.seed, "epochs": cfg.epochs,
            "epochs_done": history.epochs_done, "backbone": cfg.backbone, "subset": cfg.subset,
            "best_test_acc": best, "best_epoch": best_epoch,
            "last_test_acc": history.test_acc[-1] if history.test_acc else float("nan"),
            **({"best_val_acc": max(history.val_acc), "last_val_acc": history.val_acc[-1]} if history.val_acc else {}),
            "wall_clock_s": history.wall_clock_s, "peak_memory_mb": peak_memory_mb(self.device),
            "device": str(self.device), "run_dir": str(self.run_dir),
        }

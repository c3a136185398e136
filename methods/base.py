"""The method interface: what a method owns and what the trainer does for it.

Division of labour (after USB's ``AlgorithmBase``, microsoft/Semi-supervised-learning):

- The **trainer** (:mod:`bench.training.trainer`) owns devices, precision (autocast, grad scaling),
  the loops, ``zero_grad``/``backward``/optimiser steps, per-epoch scheduler steps,
  evaluation on the test set, logging, timing, checkpoints and resume.
- A **method** owns its models, optimisers and schedulers (built in :meth:`Method.setup`
  from the helpers in :class:`MethodContext`, so every method gets the same backbone and
  optimiser settings), its step, and its per-sample state.

A method subclass sets ``Options`` (a dataclass whose fields are its ``--set`` options, each
with ``metadata={"help": ..., "source": ...}``; an option whose published value depends on the
data set, noise or rate adds ``"setting": PerSetting(...)``, its table of cases with sources
(:mod:`bench.common.defaults`), and ``__init__`` fills it in when left at None), registers itself with
``@METHODS.register("name")`` (which sets its ``name``), and overrides:

``setup()``
    Build ``self.models`` / ``self.optimizers`` / ``self.schedulers`` (dicts by name; the
    helper :meth:`Method.add_network` adds one backbone with the run's optimiser) and
    per-sample state in ``self.state`` (tensors sized ``ctx.num_train`` on ``ctx.device``,
    indexed by dataset index, never by batch position). Everything in these four dicts is
    checkpointed and restored without further code; other state goes in
    :meth:`extra_state` / :meth:`load_extra_state`.
``view_sets`` / ``views(epoch)``
    The image views a batch must carry this epoch, one of the named sets of ``view_sets``
    (default: the first): ``"train"`` (the run's shared ``--augment``, the default), ``"plain"``,
    the shared ``"weak"``/``"weak2"`` (two independent draws) and ``"strong"`` (weak +
    RandAugment), and the views the method's module registers itself
    (:func:`bench.common.views.register_view`: GJS's ``"ra-cutout"``, DISC's ``"strong-mc"``, ...).
    Under ``--views shared`` they start from the run's ``--augment``, under ``official`` from
    crop + flip. ``own_views`` (what ``bench list`` shows, and whether ``--views`` changes the
    method's batches) is derived from ``view_sets``; the trainer refuses a view not named there.
``phases(epoch)``
    The passes over the training data this epoch (default one). A two-network method that
    trains its networks one after the other (DivideMix) returns one :class:`Phase` per
    network, each naming the optimisers it steps and, optionally, the dataset indices it
    visits, or a ``select`` callable the trainer calls when the phase begins, for a selection
    that must see the earlier phases' training (UNICON's second network).
``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``
    Whole-data work between epochs (DivideMix's evaluation pass and GMM, IDO's stage switch
    and mixture fit); ``ctx.predict_train(model)`` gives logits for every training sample in
    index order. Return a dict of metrics to log for the epoch.
``train_step(batch, epoch, phase)``
    Forward and loss for one batch; returns :class:`StepOutput`. The trainer backpropagates
    ``loss`` and steps the optimisers, then calls ``after_step(phase)`` (weight averaging).
    Loss terms in ``terms`` are logged as epoch means.
``predict(x)``
    Test-time logits (default: ``self.models["net"]``; DivideMix sums two networks).
``detections(epoch)``
    The method's per-sample guesses of which samples are clean (:class:`Detection`), after
    each epoch. A method never sees the clean labels: the trainer, which keeps them, turns the
    guesses into noise-detection metrics (``clean_auc``, ``clean_precision``,
    ``clean_recall``) where the truth is known.

Side batches: a batch besides the trainer's pass (DivideMix's unlabeled batch, peer loss's peer
batch) comes from a :class:`methods.streams.BatchStream` made for the phase, whose batches are
known ahead, so that on image files the loader's workers decode them before the step asks;
``ctx.fetch`` (a batch of arbitrary indices, made while the step waits) is for what cannot be
known ahead.

Randomness: a method draws only from ``ctx.generators()`` (the run's torch and numpy
generators of the current epoch, made from the seed and the epoch), never from a global RNG,
so a resumed run draws what an uninterrupted one does.

Class data: ``score_artifacts`` names the per-sample score files the method writes into
``ctx.artifact_dir`` (``bench plot --kind scores`` draws them split by the truth) and
``time_reference`` marks a method other methods' time is measured against (``bench table
--time`` has a ratio column per such method). ``official_options`` names the options whose
default is the paper's reading where the official code does otherwise, with the official value:
``--fidelity official`` sets them (``bench list methods --verbose`` shows them). Files a method
writes into ``ctx.artifact_dir`` (figures, per-sample vectors) are logged to MLflow under
``method/`` when the run ends; metrics it returns from the hooks are logged with the epoch as step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from bench.common.defaults import RunSetting, fill_defaults
from bench.common.errors import UsageError
from bench.common.registry import Registry

METHODS: Registry = Registry("method")


@dataclass
class NoOptions:
    """A method without options of its own."""


@dataclass
class Phase:
    """One pass over (part of) the training data within an epoch."""

    name: str = "train"
    optimizers: tuple[str, ...] | None = None  # None: every optimiser of the method
    indices: torch.Tensor | None = None  # dataset indices to visit; None: all
    batch_size: int | None = None  # None: the run's batch size
    # called by the trainer when the phase begins, after the earlier phases of the epoch have
    # trained; returns the indices to visit (they replace ``indices``): a selection that depends
    # on those phases (UNICON selects network 2's clean set after network 1's pass)
    select: Callable[[], torch.Tensor] | None = None


FAMILIES = {"paper": "the IDO paper's set", "losses": "losses and corrections", "selection": "selection",
            "semi-supervised": "semi-supervised", "other": "other"}


@dataclass
class StepOutput:
    """What a training step returns to the trainer."""

    loss: torch.Tensor  # the scalar to backpropagate
    logits: torch.Tensor | None = None  # for train accuracy against the given labels
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars to log
    step: bool = True  # False: no backward and no optimiser step for this batch (DISC's zero loss)


@dataclass
class Detection:
    """A per-sample guess of which training samples are clean, for the noise-detection metrics
    the trainer computes against the truth it keeps (the method never sees it).

    ``score``: one value per training sample (dataset index), higher = more likely clean;
    ``selected``: the clean set the method trains on, if it has one (precision and recall);
    the metric names default to ``clean_auc``, ``clean_precision`` and ``clean_recall``."""

    score: Any  # torch.Tensor or np.ndarray of shape (num_train,)
    selected: Any = None
    auc: str = "clean_auc"
    precision: str = "clean_precision"
    recall: str = "clean_recall"


@dataclass
class Generators:
    """The run's random generators for the current epoch (seeded from the seed and the epoch)."""

    torch: torch.Generator  # on the run's device
    numpy: Any  # np.random.Generator


@dataclass
class MethodContext:
    """What the trainer gives a method: sizes, devices and shared factories."""

    num_classes: int
    num_train: int
    device: torch.device
    epochs: int
    batch_size: int  # the run's training batch size
    noise_rate: float | None  # the nominal rate of synthetic noise, as official code takes it; None for real noise
    dataset: str
    noise: str
    pretrained: bool  # the backbone starts from pretrained weights (IDO's epoch split depends on it)
    make_backbone: Callable[[], nn.Module]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    make_scheduler: Callable[[torch.optim.Optimizer, int], Any]
    # logits of a model in eval mode for training samples (default all), in the order of the
    # indices given, of a view (default "plain"; "train" draws the run's augmentation)
    predict_train: Callable[..., torch.Tensor]
    # batch of arbitrary dataset indices with the given views, made now (on-disk data: by the
    # workers, while the step waits); a batch known ahead comes from a stream (prefetch)
    fetch: Callable[[torch.Tensor, tuple[str, ...]], dict[str, torch.Tensor]]
    given_labels: torch.Tensor
    artifact_dir: Path
    # the run's generators of the current epoch: every random draw of a method comes from them
    generators: Callable[[], Generators]
    # this epoch's training indices when the data set samples its epochs (Clothing1M: a fresh
    # class-balanced sample each epoch); None: every sample. Phases without indices visit it.
    epoch_pool: Callable[[], torch.Tensor | None] = lambda: None
    # ORACLE: the nominal transition matrix of the run's synthetic noise model (C x C, rows the
    # true class; None for real noise and instance noise), what official code takes from its noise
    # generator for known-T experiments. A method may read it only under an option named as such.
    noise_transition: Callable[[], Any] = lambda: None
    # the loader's maker of side-stream batches ahead of use (:class:`methods.streams.BatchStream`
    # calls it: DivideMix's unlabeled batches); None: made by ``fetch`` when asked
    prefetch: Any = None


def run_setting(ctx: MethodContext) -> RunSetting:
    """What the run's per-setting defaults may depend on (bench.common.defaults)."""
    return RunSetting(ctx.dataset, ctx.noise, ctx.noise_rate, ctx.num_classes, ctx.epochs, ctx.pretrained)


class Method:
    """Base class of every method; see the module docstring for the contract."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # the paper (authors, title, venue, year) and the official repository (``bench list methods``);
    # a method without official code says so in ``code``
    paper: ClassVar[str] = ""
    code: ClassVar[str] = ""
    # per-sample score files in ctx.artifact_dir -> what the score is (an axis label)
    score_artifacts: ClassVar[dict[str, str]] = {}
    # the label of the ratio column `bench table --time` gives other methods' time against this one's
    time_reference: ClassVar[str | None] = None
    # the sets of views the method's batches carry, by name (its stages): ``views(epoch)`` returns
    # one of them, the first by default; every view a method asks for is named here, once
    view_sets: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("train",)}
    # derived from ``view_sets``: the views besides "train" and "plain" (weak, weak2, strong, and
    # those its module registers), whose augmentation follows the run's policy (--views)
    own_views: ClassVar[tuple[str, ...]] = ()
    # `--set` options under which a 3-epoch run goes through every phase of the method (a 1-epoch
    # warm-up, say): the registry's smoke test (tests/test_registry_entries.py) runs each method so
    smoke_options: ClassVar[dict[str, str]] = {}
    # the options whose default follows the paper where the official code does otherwise, with the
    # official code's value (option -> value as `--set` takes it), each entry with a comment citing
    # the official file and lines: `--fidelity official` sets them unless `--set` gives them
    # (bench/training/resolve.py); tests/test_registry.py checks each names an option and parses
    official_options: ClassVar[dict[str, str]] = {}
    # the group `bench report` and `bench plot` show the method in (FAMILIES): the IDO paper's
    # comparison set, robust losses and loss corrections, sample selection, semi-supervised
    family: ClassVar[str] = "other"
    # what `bench perf` times of the method (bench/drivers/perf.py), under ``smoke_options``:
    # ``perf_figures`` names the figures it is in ("methods": the suites' methods side by side;
    # "strong": the strong view's share of its step), ``perf_step_epoch`` the epoch (from 0)
    # whose first phase is the step timed alone (the first after the warm-up that the smoke
    # options shorten)
    perf_figures: ClassVar[tuple[str, ...]] = ()
    perf_step_epoch: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "own_views" in vars(cls):
            raise TypeError(f"{cls.__name__}: own_views is derived from view_sets; name the views there")
        cls.own_views = tuple(dict.fromkeys(v for views in cls.view_sets.values() for v in views
                                            if v not in ("train", "plain")))

    def __init__(self, options: Any, ctx: MethodContext) -> None:
        # options left at None that have a per-setting table (bench.common.defaults) get the
        # table's value for this run: what the method reads, logs and saves
        self.opts = fill_defaults(options, run_setting(ctx))
        self.ctx = ctx
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.state: dict[str, torch.Tensor] = {}

    @classmethod
    def search_space(cls, setting: Any) -> dict[str, Any]:
        """What ``bench study`` tunes by default: ``{option: bench.common.search.Param}`` for a
        :class:`bench.common.search.Setting`. None here: a method without hyperparameters says so."""
        return {}

    # --- to override -------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def views(self, epoch: int) -> tuple[str, ...]:
        return next(iter(self.view_sets.values()))

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase()]

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        return {}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        raise NotImplementedError

    def after_step(self, phase: Phase) -> None:
        """Called after the optimiser step of every batch that stepped (an EMA teacher's update:
        ELR+); nothing by default."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        return {}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net"](x)

    def detections(self, epoch: int) -> list[Detection]:
        """The method's guesses of the clean samples after ``epoch`` (none by default)."""
        return []

    def transition(self) -> Any:
        """The method's current estimate of the noise transition matrix T (C x C tensor or array,
        T[i, j] = P(given label j | true class i)), or None (the default: it estimates none). The
        trainer logs its error against the training set's realised T where the truth is known
        (``t_error``, :func:`bench.training.diagnostics.transition_error`)."""
        return None

    def resolved_options(self) -> dict[str, Any]:
        """The options as the method uses them after ``setup`` (per-setting defaults filled in);
        this is what the run logs as ``method.<option>`` parameters and saves in config.json."""
        return dataclasses.asdict(self.opts)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- checkpointing: the four dicts travel without per-method code ---------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "state": {k: v.detach().cpu() for k, v in self.state.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for k, m in self.models.items():
            m.load_state_dict(sd["models"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(sd["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(sd["schedulers"][k])
        for k, v in sd["state"].items():
            self.state[k] = v.to(self.ctx.device)
        self.load_extra_state(sd["extra"])

    def check_warmup(self, warmup: int, after: str = "training epoch") -> int:
        """``warmup`` (epochs) when it leaves at least one ``after`` epoch in ``--epochs``, else
        the one line every method with a warm-up gives (its option is ``warmup_epochs``)."""
        if warmup >= self.ctx.epochs:
            raise UsageError(f"{self.name}: warm-up of {warmup} epochs leaves no {after} of --epochs "
                             f"{self.ctx.epochs}; raise --epochs or --set warmup_epochs=N")
        return warmup

    def add_network(self, name: str = "net", schedule_epochs: int | None = None) -> nn.Module:
        """A fresh backbone under ``name`` with the run's optimiser and, when ``schedule_epochs``
        is given, the run's scheduler over that many epochs (none if the run has none)."""
        net = self.ctx.make_backbone()
        opt = self.ctx.make_optimizer(net.parameters())
        self.models[name], self.optimizers[name] = net, opt
        if schedule_epochs is not None:
            sched = self.ctx.make_scheduler(opt, schedule_epochs)
            if sched is not None:
                self.schedulers[name] = sched
        return net

    def train_mode(self, training: bool) -> None:
        for m in self.models.values():
            m.train(training)

"""Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with
Extremely Noisy Labels", NeurIPS 2018; official code github.com/bhanML/Co-teaching, ``main.py``
and ``loss.py`` ``loss_coteaching``).

Two networks of the same architecture with different initialisations. Each step, both compute
the per-sample cross-entropy of the batch; each network ranks the batch by its OWN loss and keeps
the ``num_keep = int((1 - r_t) * B)`` samples with the smallest loss (``loss.py``: truncation, as
``int`` in Python); network 1 is updated on the samples network 2 kept and vice versa, each loss
the mean cross-entropy over the kept samples. (The official code divides that mean once more by
``num_remember``, since its ``F.cross_entropy`` already averages: a 1 / num_keep gradient scale,
which Adam all but cancels and SGD would feel as a ~100x smaller learning rate; we use the plain
mean.) The default forget rate is the run's nominal noise rate (``main.py``: ``forget_rate =
noise_rate``); real noise has none, so the option is required there. The two losses are returned as one sum:
the parameters are disjoint, so the backward pass gives each network exactly its own gradient.

Forget rate: the official ``rate_schedule`` (``main.py``), indexed by the epoch counted from 0:
``np.linspace(0, forget_rate ** exponent, tk)[t]`` for ``t < tk`` and ``forget_rate`` from
``t = tk`` on. (The official loop trains epochs 1 .. n_epoch - 1 -- its epoch 0 only evaluates
the random initialisation -- so its first trained epoch has rate ``r ** c / (tk - 1)``; here
every epoch trains and the first one has rate 0.)

Learning rate (``lr_schedule=official``, ``main.py`` ``alpha_plan``/``beta1_plan`` scaled to
``--epochs`` E): constant until ``D = round(0.4 E)`` (80 of 200 for MNIST/CIFAR-10; 0.5 E, 100 of
200, for more than 10 classes as the official CIFAR-100 branch), then ``lr * (E - t) / (E - D)``
-- linear towards 0, whose last epoch has ``lr / (E - D)`` as the official one -- and Adam's
beta1 switches from 0.9 to 0.1 at ``D``. The lr applies to every optimiser, beta1 to those
with ``betas``; the run's ``--scheduler`` is not used. ``lr_schedule=trainer`` leaves the
run's optimiser and scheduler alone.

Deviations: ranking uses a stable sort (the official ``np.argsort`` is not stable: ties may
break differently); ``num_keep`` is at least 1 (the official code divides by zero on a batch
smaller than ``1 / (1 - r)``: its loader drops the last batch); no cap of 400 iterations per
epoch (the official ``num_iter_per_epoch``). Test accuracy is network 1's (the official
``main.py`` prints both networks').
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Detection, Method, Phase, StepOutput
from methods.cotraining import (
    NominalRate,
    apply_lr_plan,
    cross_update_losses,
    decay_start_epoch,
    forget_rate_at,
)
from methods.lr import base_lrs


@dataclass
class CoteachingOptions:
    forget_rate: float | None = field(default=None, metadata={
        "help": "final fraction of each batch dropped as large-loss; default the run's nominal noise rate",
        "source": "main.py --forget_rate (None: noise_rate)",
        "setting": PerSetting(case(NominalRate("coteaching", "main.py"), "main.py --forget_rate (None: noise_rate)"))})
    tk: int = field(default=10, metadata={
        "help": "epochs over which the forget rate ramps up (Tk)", "source": "main.py --num_gradual 10"})
    exponent: float = field(default=1.0, metadata={
        "help": "c of the ramp: linspace(0, forget_rate ** c, tk)", "source": "main.py --exponent 1"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: constant lr, from 40% of the epochs linear decay and Adam beta1 0.1; "
                "trainer: the run's optimiser and scheduler",
        "source": "main.py alpha_plan, beta1_plan"})

    def __post_init__(self) -> None:
        if self.forget_rate is not None and not 0 <= self.forget_rate < 1:
            raise ValueError(f"forget_rate {self.forget_rate} is outside [0, 1)")
        if self.tk < 1:
            raise ValueError(f"tk {self.tk} must be at least 1")
        if not self.exponent > 0:
            raise ValueError(f"exponent {self.exponent} must be positive")


@METHODS.register("coteaching", aliases=("co-teaching",))
class Coteaching(Method):
    """Co-teaching (NeurIPS 2018): two nets, each trained on the small-loss samples of its peer."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Han et al., Co-teaching: Robust Training of Deep Neural Networks with Extremely Noisy Labels, NeurIPS 2018"
    code = "github.com/bhanML/Co-teaching"
    Options = CoteachingOptions
    smoke_options = {"tk": "1"}  # the forget-rate ramp done after one epoch

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """forget_rate (the paper's tau) from half to 1.5 times its default, the noise rate
        (main.py: forget_rate = noise_rate); Tk and the ramp exponent c around main.py's
        defaults (10, 1). Ranges our choice, centred on the official values."""
        r = setting.noise_rate
        low, high = (round(0.5 * r, 6), round(min(1.5 * r, 0.95), 6)) if r else (0.0, 0.5)  # real noise: rate unknown
        return {
            "forget_rate": Param("float", low, high, grid=tuple(sorted({low, (low + high) / 2, high})),
                                 source="main.py --forget_rate default noise_rate; 0.5x-1.5x our choice"),
            "tk": Param("int", 1, 20, grid=(1, 5, 10, 15, 20), source="main.py --num_gradual 10"),
            "exponent": Param("float", 0.5, 2.0, grid=(0.5, 1.0, 2.0), source="main.py --exponent 1"),
        }

    def setup(self) -> None:
        ctx = self.ctx
        self.forget_rate = self.opts.forget_rate  # the nominal noise rate unless given (Method.__init__)
        for name in ("net1", "net2"):
            # two calls: two initialisations; the run's scheduler only with lr_schedule=trainer
            self.add_network(name, ctx.epochs if self.opts.lr_schedule == "trainer" else None)
        # the initial lr of every group: the official plan is derived from it at every epoch
        self.base_lr = base_lrs(self.optimizers)
        self.decay_start = decay_start_epoch(ctx.epochs, ctx.num_classes)
        n, dev = ctx.num_train, ctx.device
        self.state.update(loss1=torch.zeros(n, device=dev), kept1=torch.zeros(n, dtype=torch.bool, device=dev))
        self.rate = 0.0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.rate = forget_rate_at(epoch, self.forget_rate, self.opts.tk, self.opts.exponent)
        if self.opts.lr_schedule == "official":
            self._apply_lr_plan(epoch)
        return {"forget_rate": self.rate}

    def _apply_lr_plan(self, epoch: int) -> None:
        apply_lr_plan(self.optimizers, self.base_lr, epoch, self.ctx.epochs, self.decay_start)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        x, y, idx = batch["train"], batch["label"], batch["index"]
        logits1 = self.models["net1"](x)
        logits2 = self.models["net2"](x)
        loss1 = F.cross_entropy(logits1.float(), y, reduction="none")
        loss2 = F.cross_entropy(logits2.float(), y, reduction="none")
        num_keep = max(int((1 - self.rate) * len(y)), 1)  # loss.py: int(remember_rate * B)
        l1, l2, kept1, _ = cross_update_losses(loss1, loss2, num_keep)
        self.state["loss1"][idx] = loss1.detach()
        mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        mask[kept1] = True
        self.state["kept1"][idx] = mask
        return StepOutput(loss=l1 + l2, logits=logits1,
                          terms={"loss_net1": l1.detach(), "loss_net2": l2.detach()})

    def detections(self, epoch: int) -> list[Detection]:
        """Net 1's small-loss ranking (minus its last loss per sample) and its kept set."""
        return [Detection(-self.state["loss1"], selected=self.state["kept1"])]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net1"](x)  # network 1's (main.py prints both)

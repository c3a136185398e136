"""Generalized label smoothing: label smoothing (``ls``) and negative label smoothing (``nls``)
(Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022; official
github.com/UCSC-REAL/negative-label-smoothing, ``loss.py:25-34``, ``main_GLS_direct_train.py``,
``main_warmup.py``, ``main_GLS_load.py``).

One network trained with cross-entropy against (1 - r) onehot(y) + r / C, for a smooth rate r
of either sign (``loss_gls``):

    L = wa CE + wb [ (1 - r) (-log p_y) + r mean_k (-log p_k) ]      (wa 0, wb 1)

r > 0 is label smoothing, r < 0 negative label smoothing, whose loss is unbounded below (it
pushes the other logits down without end), hence the official two-stage recipe for high noise:
CE warm-up (120 epochs, then the GLS stage, 100 epochs at a constant lr of 1e-6 against the
warm-up's 0.1). Here: ``ls`` trains with r from the start (the "direct" script, r = 0.1, its
default ``--smooth_rate``); ``nls`` warms up with CE for 120/220 of the epochs, then trains
with r = -0.2 at the run's lr times 1e-5 (``stage2_lr=official``; ``trainer`` keeps the run's
schedule). The paper tunes r per setting over {0.8, 0.6, 0.4, 0.2, 0, -0.2, ..., -8}
(README.md:15) and reports the best in its tables; -0.2, the first negative rate of that grid,
is our default, named as such. Departures, named: the official warm-up keeps the checkpoint
with the best test accuracy; here the second stage starts from the last warm-up epoch. Both
stages use the run's optimiser (the official warm-up is plain SGD, the second stage SGD with
Nesterov momentum), as every method here does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, Scaled, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.lr import base_lrs, set_lrs

WARMUP = PerSetting(case(Scaled(120, 220, least=0),
                         "README.md:38-49: main_warmup.py 120 epochs, then main_GLS_load.py 100"))
STAGE2_LR = 1e-6 / 0.1  # main_GLS_load.py lr_plan = [1e-6] * 100 after a warm-up at lr 0.1


def gls_loss(logits: torch.Tensor, y: torch.Tensor, rate: float, wa: float = 0.0, wb: float = 1.0) -> torch.Tensor:
    """wa CE + wb ((1 - r) NLL + r mean_k -log p_k), summed over the batch / B (``loss_gls``)."""
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    gls = (1 - rate) * nll + rate * (-logp.mean(dim=1))
    return (wa * nll + wb * gls).mean()


@dataclass
class LSOptions:
    smooth_rate: float = field(default=0.1, metadata={
        "help": "smooth rate r (> 0 smoothing, < 0 negative smoothing)",
        "source": "main_GLS_direct_train.py --smooth_rate"})
    warmup_epochs: int | None = field(default=0, metadata={
        "help": "CE epochs before the smoothed loss; 0: direct training", "source": "README.md:31-36 (direct)",
        "setting": WARMUP})
    wa: float = field(default=0.0, metadata={"help": "weight of plain CE beside GLS", "source": "--wa 0"})
    wb: float = field(default=1.0, metadata={"help": "weight of GLS", "source": "--wb 1"})
    stage2_lr: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "after a warm-up: official = constant lr x 1e-5 (1e-6 of 0.1); trainer = the run's schedule",
        "source": "main_GLS_load.py lr_plan"})

    def __post_init__(self) -> None:
        if self.smooth_rate >= 1:
            raise ValueError(f"smooth_rate {self.smooth_rate} must be < 1 (1 leaves no weight on the label)")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be >= 0")


@dataclass
class NLSOptions(LSOptions):
    smooth_rate: float = field(default=-0.2, metadata={
        "help": "smooth rate r (< 0: negative smoothing); the paper tunes it per setting",
        "source": "harness default: the first negative rate of README.md:15's grid"})
    warmup_epochs: int | None = field(default=None, metadata={
        "help": "CE warm-up epochs; default 120/220 of the run's epochs", "source": "README.md:38-49",
        "setting": WARMUP})


class _GLS(Method):
    """CE warm-up (when asked), then the generalized label-smoothing loss."""

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """r over the paper's grid (README.md:15)."""
        return {"smooth_rate": Param("float", -8.0, 0.8, grid=(0.8, 0.4, 0.2, 0.0, -0.2, -0.4, -1.0, -2.0, -4.0),
                                     source="README.md:15")}

    def setup(self) -> None:
        o, ctx = self.opts, self.ctx  # per-setting defaults filled in by Method.__init__
        self.warmup = o.warmup_epochs
        self.check_warmup(self.warmup, "epoch of the smoothed loss")
        self.add_network("net", schedule_epochs=ctx.epochs)
        self.base_lr = base_lrs(self.optimizers)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        if self.warmup > 0 and epoch >= self.warmup and self.opts.stage2_lr == "official":
            set_lrs(self.optimizers, self.base_lr, lambda lr: lr * STAGE2_LR)
        return {"gls_stage": float(epoch >= self.warmup)}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        if epoch < self.warmup:
            loss = F.cross_entropy(logits.float(), batch["label"])
        else:
            loss = gls_loss(logits.float(), batch["label"], self.opts.smooth_rate, self.opts.wa, self.opts.wb)
        return StepOutput(loss=loss, logits=logits)


@METHODS.register("ls")
class LabelSmoothing(_GLS):
    """Label smoothing (r > 0) as GLS defines it (ICML 2022): direct training, r = 0.1."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Wei et al., To Smooth or Not? When Label Smoothing Meets Noisy Labels, ICML 2022"
    code = "github.com/UCSC-REAL/negative-label-smoothing"
    Options = LSOptions


@METHODS.register("nls")
class NegativeLabelSmoothing(_GLS):
    """Negative label smoothing (ICML 2022): CE warm-up, then r < 0 at a tiny learning rate."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Wei et al., To Smooth or Not? When Label Smoothing Meets Noisy Labels, ICML 2022"
    code = "github.com/UCSC-REAL/negative-label-smoothing"
    Options = NLSOptions

"""JoCoR (Wei et al., "Combating Noisy Labels by Agreement: A Joint Training Method with
Co-Regularization", CVPR 2020; official code github.com/hongxin001/JoCoR @86db359,
``algorithm/jocor.py``, ``algorithm/loss.py``, ``main.py``).

Two networks trained jointly on one loss. Per sample (``loss.py:20-24``)

    l_i = (1 - lam) (CE(z1_i, y_i) + CE(z2_i, y_i)) + lam (KL(p2_i || p1_i) + KL(p1_i || p2_i)),

the KL terms without detach (``loss.py:8-15``: both networks get gradient from both). The
``int((1 - tau(e)) B)`` samples of smallest l are kept (``loss.py:27-35``), the loss is their
mean, one backward, and ONE optimiser over both networks' parameters steps (``jocor.py:64-65,
139-142``); it is under the key ``joint``.

Defaults and their sources:
- ``forget_rate`` tau: the run's nominal noise rate, halved under asymmetric noise
  (``jocor.py:20-26``). JoCoR's ``asymmetric`` is the semantic class map (``data/utils.py``
  ``noisify_cifar10_asymmetric`` / ``noisify_cifar100_asymmetric`` / ``noisify_mnist_asymmetric``),
  our ``asym``; its ``pairflip`` (our ``pairflip``) is not halved. So only ``asym`` halves, not every
  model of ``bench.common.noise_models.CLASS_DEPENDENT``. Real noise has no nominal rate: the
  option is required there.
- the ramp ``linspace(0, tau ** c, tk)`` for the first ``tk`` = 10 epochs, then tau
  (``jocor.py:41-42``; ``main.py:20-23`` ``--num_gradual 10``, ``--exponent 1``); ``tk`` not scaled
  to ``--epochs``, as methods/coteaching.py.
- ``co_lambda``: the README's values, never the CLI default 0.1 (``main.py:32``): CIFAR-10 0.9
  (sym 20/50%, asym 40%), 0.65 at a nominal rate >= 0.8 (80% noise) (``README.md:30``); CIFAR-100
  0.85 (``README.md:31``); MNIST 0.95 (``example.sh:3``). Other data sets: CIFAR-10's rule with at
  most 10 classes (Fashion-MNIST: 0.9, 0.65 from 80%), else CIFAR-100's 0.85; real noise 0.9/0.85.
- ``lr_schedule=official``: the official Adam plan (``jocor.py:30-38,157-160``) through
  methods/cotraining.py: decay from 40% of the epochs (80 of 200, ``main.py:62,85``) with at most
  10 classes, 50% with more (100 of 200, CIFAR-100, ``main.py:109``); ``trainer``: the run's
  optimiser schedule on the joint optimiser.

Deviations: ranking by a stable sort on the device (the official sorts on the CPU with
``np.argsort``, not stable); at least one sample kept (the official mean of an empty set is nan;
its loader drops the last batch); no cap of 401 iterations per epoch (``jocor.py:120-121``); every
epoch trains (the official epoch 0 only evaluates). No official quirk departs from the paper,
so there is no ``loss`` option. Test accuracy is network 1's; the official reports the mean of
both networks' accuracies over the last 10 epochs (``main.py:193-198``). Detections: the joint
loss l of each sample's last visit (what JoCoR ranks by) as the score, and the kept set.
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
    decay_start_epoch,
    forget_rate_at,
    small_loss,
)
from methods.lr import base_lrs

ASYMMETRIC = "asym"  # JoCoR's noise_type "asymmetric" (data/utils.py), whose tau jocor.py:21-22 halves
CO_LAMBDA_CIFAR10 = 0.9  # README.md:30: CIFAR-10 20%, 50% and asym 40%
CO_LAMBDA_CIFAR10_HIGH = 0.65  # README.md:30: "When it comes to 80% noise, the best is 0.65"
HIGH_NOISE = 0.8
CO_LAMBDA_CIFAR100 = 0.85  # README.md:31
CO_LAMBDA_MNIST = 0.95  # example.sh:3 --co_lambda 0.95


# the README's lambda for this data set and nominal noise rate, or the closest one (others: as
# CIFAR-10 with <= 10 classes, else CIFAR-100)
CO_LAMBDA = PerSetting(
    case(CO_LAMBDA_MNIST, "example.sh:3 --co_lambda 0.95", dataset="mnist"),
    case(CO_LAMBDA_CIFAR100, "README.md:31", dataset="cifar100"),
    case(CO_LAMBDA_CIFAR100, "README.md:31 (CIFAR-100's, more than 10 classes)", classes=">10"),
    case(CO_LAMBDA_CIFAR10_HIGH, "README.md:30: at 80% noise the best is 0.65", rate=f">={HIGH_NOISE}"),
    case(CO_LAMBDA_CIFAR10, "README.md:30: CIFAR-10 20%, 50% and asym 40%"))
# jocor.py:20-26: the nominal rate is halved under asymmetric noise (a given rate is used as it is)
FORGET_RATE = PerSetting(
    case(NominalRate("jocor", "jocor.py", 0.5), "algorithm/jocor.py:20-26", noise=ASYMMETRIC),
    case(NominalRate("jocor", "jocor.py"), "algorithm/jocor.py:20-26"))


def kl_loss(pred: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(soft) || softmax(pred)), gradient to both (``kl_loss_compute``,
    ``loss.py:8-15``, ``reduce=False``)."""
    return F.kl_div(F.log_softmax(pred, 1), F.log_softmax(soft, 1), reduction="none", log_target=True).sum(1)


def jocor_loss(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor, co_lambda: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (joint loss, CE1 + CE2, KL(p2||p1) + KL(p1||p2)) of ``loss_jocor`` (loss.py:20-24)."""
    ce = F.cross_entropy(logits1, y, reduction="none") + F.cross_entropy(logits2, y, reduction="none")
    kl = kl_loss(logits1, logits2) + kl_loss(logits2, logits1)
    return (1 - co_lambda) * ce + co_lambda * kl, ce, kl


@dataclass
class JoCoROptions:
    forget_rate: float | None = field(default=None, metadata={
        "help": "final fraction of each batch dropped as large-loss; default the run's nominal noise rate, "
                "halved under asym noise (not pairflip)",
        "source": "algorithm/jocor.py:20-26", "setting": FORGET_RATE})
    co_lambda: float | None = field(default=None, metadata={
        "help": "weight of the co-regularisation (KL) against the CE; default by data set: CIFAR-10 0.9 (0.65 "
                "from 80% noise), CIFAR-100 0.85, MNIST 0.95; others as CIFAR-10 if <= 10 classes else CIFAR-100",
        "source": "README.md:28-31; example.sh:3 (not the CLI default 0.1, main.py:32)", "setting": CO_LAMBDA})
    tk: int = field(default=10, metadata={
        "help": "epochs over which the forget rate ramps up (T_k)",
        "source": "main.py:20-21 --num_gradual 10; algorithm/jocor.py:41-42"})
    exponent: float = field(default=1.0, metadata={
        "help": "c of the ramp: linspace(0, forget_rate ** c, tk)",
        "source": "main.py:22-23 --exponent 1; algorithm/jocor.py:42"})
    lr_schedule: Literal["official", "trainer"] = field(default="official", metadata={
        "help": "official: constant lr, linear decay and Adam beta1 0.1 from 40% of the epochs (50% with more "
                "than 10 classes); trainer: the run's optimiser and scheduler",
        "source": "algorithm/jocor.py:30-38,157-160; main.py:62,85,109 epoch_decay_start 80/80/100 of 200"})

    def __post_init__(self) -> None:
        if self.forget_rate is not None and not 0 <= self.forget_rate < 1:
            raise ValueError(f"forget_rate {self.forget_rate} is outside [0, 1)")
        if self.co_lambda is not None and not 0 <= self.co_lambda <= 1:
            raise ValueError(f"co_lambda {self.co_lambda} is outside [0, 1]")
        if self.tk < 1:
            raise ValueError(f"tk {self.tk} must be at least 1")
        if not self.exponent > 0:
            raise ValueError(f"exponent {self.exponent} must be positive")


@METHODS.register("jocor")
class JoCoR(Method):
    """JoCoR (CVPR 2020): two networks, one joint loss with co-regularisation, one small-loss
    selection and one optimiser."""

    family = "selection"  # `bench report` and `bench plot` group methods by it

    paper = ("Wei et al., Combating Noisy Labels by Agreement: A Joint Training Method with Co-Regularization, "
             "CVPR 2020")
    code = "github.com/hongxin001/JoCoR"
    Options = JoCoROptions
    smoke_options = {"tk": "1"}  # the forget-rate ramp done after one epoch

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """forget_rate from half to 1.5 times the noise rate (jocor.py:20-26: the noise rate);
        co_lambda over the README's "between 0.5-0.9" and its values 0.65, 0.85, 0.9 with
        example.sh's 0.95; tk and exponent over main.py's help ("can be 5, 10, 15", "0.5, 1, 2")."""
        r = setting.noise_rate
        low, high = (round(0.5 * r, 6), round(min(1.5 * r, 0.95), 6)) if r else (0.0, 0.5)  # real noise: rate unknown
        return {
            "forget_rate": Param("float", low, high, grid=tuple(sorted({low, (low + high) / 2, high})),
                                 source="jocor.py:20-26 forget_rate = noise_rate; 0.5x-1.5x our choice"),
            "co_lambda": Param("float", 0.5, 0.95, grid=(0.5, 0.65, 0.85, 0.9, 0.95),
                               source="README.md:28-31 (0.5-0.9; 0.65, 0.85, 0.9); example.sh 0.95"),
            "tk": Param("int", 5, 15, grid=(5, 10, 15), source="main.py:20-21 --num_gradual 'can be 5, 10, 15'"),
            "exponent": Param("float", 0.5, 2.0, grid=(0.5, 1.0, 2.0),
                              source="main.py:22-23 --exponent 'can be 0.5, 1, 2'"),
        }

    def setup(self) -> None:
        ctx = self.ctx
        self.forget_rate, self.co_lambda = self.opts.forget_rate, self.opts.co_lambda  # filled per setting
        for name in ("net1", "net2"):  # two initialisations
            self.models[name] = ctx.make_backbone()
        # jocor.py:64-65: one Adam over list(model1.parameters()) + list(model2.parameters())
        opt = ctx.make_optimizer([*self.models["net1"].parameters(), *self.models["net2"].parameters()])
        self.optimizers["joint"] = opt
        if self.opts.lr_schedule == "trainer":
            sched = ctx.make_scheduler(opt, ctx.epochs)
            if sched is not None:
                self.schedulers["joint"] = sched
        self.base_lr = base_lrs(self.optimizers)
        self.decay_start = decay_start_epoch(ctx.epochs, ctx.num_classes)
        n, dev = ctx.num_train, ctx.device
        self.state.update(loss=torch.zeros(n, device=dev), kept=torch.zeros(n, dtype=torch.bool, device=dev))
        self.rate = 0.0

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        self.rate = forget_rate_at(epoch, self.forget_rate, self.opts.tk, self.opts.exponent)
        if self.opts.lr_schedule == "official":
            apply_lr_plan(self.optimizers, self.base_lr, epoch, self.ctx.epochs, self.decay_start)
        return {"forget_rate": self.rate}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        x, y, idx = batch["train"], batch["label"], batch["index"]
        logits1 = self.models["net1"](x)
        logits2 = self.models["net2"](x)
        loss, ce, kl = jocor_loss(logits1.float(), logits2.float(), y, self.co_lambda)
        num_keep = max(int((1 - self.rate) * len(y)), 1)  # loss.py:30-31
        kept = small_loss(loss, num_keep)
        self.state["loss"][idx] = loss.detach()
        mask = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        mask[kept] = True
        self.state["kept"][idx] = mask
        return StepOutput(loss=loss[kept].mean(), logits=logits1,  # loss.py:38
                          terms={"loss_ce": ce[kept].mean().detach(), "loss_kl": kl[kept].mean().detach()})

    def detections(self, epoch: int) -> list[Detection]:
        """The joint loss's small-loss ranking (minus each sample's last loss) and the kept set."""
        return [Detection(-self.state["loss"], selected=self.state["kept"])]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.models["net1"](x)  # network 1 (the official reports both networks' mean)

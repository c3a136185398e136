"""ELR, early-learning regularisation (Liu et al., "Early-Learning Regularization Prevents
Memorization of Noisy Labels", NeurIPS 2020; official code github.com/shengliu66/ELR,
``ELR/model/loss.py`` ``elr_loss``).

One network. Every sample i keeps a target t_i (zeros at the start), a moving average of the
network's predictions, updated at every visit BEFORE the loss is computed (as ``elr_loss``):

    p   = softmax(logits) clamped to [1e-4, 1 - 1e-4]
    t_i <- beta t_i + (1 - beta) p_i / sum(p_i)        (no gradient)
    L   = CE(logits, y) + lam * mean_i log(1 - <t_i, p_i>)

In the regulariser ``p`` is the clamped, not renormalised, softmax and carries the gradient.

Defaults of beta and lam by setting (official configs): CIFAR-10 symmetric 0.7 / 3, CIFAR-10
asymmetric 0.9 / 1, CIFAR-100 0.9 / 7. Data sets without official values use the CIFAR-10
values of their noise type (``asym`` -> asymmetric, every other model -> symmetric) when they
have at most 10 classes, and the CIFAR-100 values otherwise (the tables ``BETA`` and ``LAM``). The
resolved values are logged as ``elr_beta`` and ``elr_lam`` in the first epoch. The run's
optimiser and schedule are used as they are (official: SGD lr 0.02, ResNet-34).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, case
from bench.common.noise_models import CLASS_DEPENDENT
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput

PROB_CLAMP = 1e-4  # loss.py: torch.clamp(y_pred, 1e-4, 1.0 - 1e-4)

# Per-setting defaults of the official configs: data sets without official values take the
# CIFAR-10 values of their noise type (class-dependent -> asymmetric) with at most 10 classes,
# the CIFAR-100 values otherwise.
BETA = PerSetting(
    case(0.9, "ELR/config_cifar100.json", dataset="cifar100"),
    case(0.9, "ELR/config_cifar100.json (> 10 classes)", classes=">10"),
    case(0.9, "ELR/config_cifar10_asym.json (class-dependent noise)", noise=CLASS_DEPENDENT),
    case(0.7, "ELR/config_cifar10.json"))
LAM = PerSetting(
    case(7.0, "ELR/config_cifar100.json", dataset="cifar100"),
    case(7.0, "ELR/config_cifar100.json (> 10 classes)", classes=">10"),
    case(1.0, "ELR/config_cifar10_asym.json (class-dependent noise)", noise=CLASS_DEPENDENT),
    case(3.0, "ELR/config_cifar10.json"))


@dataclass
class ELROptions:
    beta: float | None = field(default=None, metadata={
        "help": "momentum of the per-sample target; default by setting (CIFAR-10 sym 0.7, asym 0.9, "
                "CIFAR-100 0.9; other data sets as CIFAR-10 if <= 10 classes else CIFAR-100)",
        "source": "ELR/config_cifar10.json, config_cifar10_asym.json, config_cifar100.json", "setting": BETA})
    lam: float | None = field(default=None, metadata={
        "help": "weight of the regulariser; default by setting (CIFAR-10 sym 3, asym 1, CIFAR-100 7; "
                "other data sets as beta)",
        "source": "ELR/config_cifar10.json, config_cifar10_asym.json, config_cifar100.json", "setting": LAM})

    def __post_init__(self) -> None:
        if self.beta is not None and not 0 <= self.beta < 1:
            raise ValueError(f"beta {self.beta} is outside [0, 1)")
        if self.lam is not None and not self.lam >= 0:
            raise ValueError(f"lam {self.lam} must be >= 0")


def elr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, beta: float,
             lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Update ``target[idx]`` in place, then return CE + lam * ELR and the two terms."""
    p = F.softmax(logits, dim=1).clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    p_ = p.detach()
    target[idx] = beta * target[idx] + (1 - beta) * (p_ / p_.sum(dim=1, keepdim=True))
    ce = F.cross_entropy(logits, y)
    reg = (1 - (target[idx] * p).sum(dim=1)).log().mean()
    return ce + lam * reg, {"loss_ce": ce.detach(), "loss_elr": reg.detach()}


@METHODS.register("elr")
class ELR(Method):
    """ELR (NeurIPS 2020): cross-entropy plus a penalty for leaving a running-average target."""

    family = "paper"  # `bench report` and `bench plot` group methods by it

    paper = "Liu et al., Early-Learning Regularization Prevents Memorization of Noisy Labels, NeurIPS 2020"
    code = "github.com/shengliu66/ELR (ELR/)"
    Options = ELROptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """beta and lambda spanning the official configs' values (beta 0.7 / 0.9, lambda 1 / 3 / 7:
        config_cifar10.json, config_cifar10_asym.json, config_cifar100.json); ends our choice."""
        return {
            "beta": Param("float", 0.1, 0.99, grid=(0.1, 0.5, 0.7, 0.9, 0.99), source="ELR configs 0.7, 0.9"),
            "lam": Param("float", 0.5, 10.0, log=True, grid=(1.0, 3.0, 7.0, 10.0), source="ELR configs 1, 3, 7"),
        }

    def setup(self) -> None:
        ctx = self.ctx
        self.beta, self.lam = self.opts.beta, self.opts.lam  # per-setting defaults filled in by Method.__init__
        self.add_network("net", schedule_epochs=ctx.epochs)
        self.state["target"] = torch.zeros(ctx.num_train, ctx.num_classes, device=ctx.device)

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        # the logged options are the dataclass's (None = by setting): log what was resolved
        return {"elr_beta": self.beta, "elr_lam": self.lam} if epoch == 0 else {}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        loss, terms = elr_loss(logits.float(), batch["label"], self.state["target"], batch["index"],
                               self.beta, self.lam)
        return StepOutput(loss=loss, logits=logits, terms=terms)

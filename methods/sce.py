"""SCE, symmetric cross-entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with
Noisy Labels", ICCV 2019; official Keras code github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels,
``loss.py:9-21``; PyTorch port HanxunH/SCELoss-Reproduce ``loss.py:14-27``).

One network trained with

    L = alpha * CE(logits, y) + beta * RCE,    RCE = -sum_k clamp(p_k, 1e-7, 1) log clamp(y_k, 1e-4, 1)

on the one-hot given label y: with one-hot labels RCE = -ln(1e-4) (1 - p_y) = 9.2103 (1 - p_y).
The paper writes log 0 = A = -4; the code's effective A is ln(1e-4), and the published alpha and
beta were tuned with it, so the code is followed. CE is computed from the
logits (the PyTorch port; the Keras code clips p at 1e-7, the same value except where p_y < 1e-7).

Defaults per data set (official ``train_models.py:207-225``): CIFAR-10 alpha 0.1, beta 1.0;
CIFAR-100 alpha 6.0, beta 0.1; MNIST alpha 0.01, beta 1.0. Other data sets take the CIFAR values
of the same class count (<= 10 classes: CIFAR-10's), the house rule; Fashion-MNIST is not
MNIST, so it gets CIFAR-10's (MNIST's are one `--set alpha=0.01` away).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.common.defaults import PerSetting, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput

P_CLAMP = 1e-7  # tf.clip_by_value(y_pred, 1e-7, 1.0) (loss.py:14), SCE-pt loss.py:22
LABEL_CLAMP = 1e-4  # tf.clip_by_value(y_true, 1e-4, 1.0) (loss.py:17), SCE-pt loss.py:24

# Per-setting defaults (train_models.py:207-225): data sets without official values take the
# CIFAR values of the same class count (<= 10 classes: CIFAR-10's).
ALPHA = PerSetting(
    case(6.0, "train_models.py:221-225: CIFAR-100", dataset="cifar100"),
    case(6.0, "train_models.py:221-225: CIFAR-100's (> 10 classes)", classes=">10"),
    case(0.1, "train_models.py:215-219: CIFAR-10"))
BETA = PerSetting(
    case(0.1, "train_models.py:221-225: CIFAR-100", dataset="cifar100"),
    case(0.1, "train_models.py:221-225: CIFAR-100's (> 10 classes)", classes=">10"),
    case(1.0, "train_models.py:215-219: CIFAR-10"))


def sce_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> tuple[torch.Tensor, dict]:
    """alpha CE + beta RCE, batch means; also the two terms (detached)."""
    ce = F.cross_entropy(logits, y)
    p = F.softmax(logits, dim=1).clamp(P_CLAMP, 1.0)
    onehot = F.one_hot(y, logits.shape[1]).to(p.dtype).clamp(LABEL_CLAMP, 1.0)
    rce = -(p * onehot.log()).sum(dim=1).mean()
    return alpha * ce + beta * rce, {"loss_ce": ce.detach(), "loss_rce": rce.detach()}


@dataclass
class SCEOptions:
    alpha: float | None = field(default=None, metadata={
        "help": "weight of CE; default per data set (CIFAR-10 0.1, CIFAR-100 6.0)",
        "source": "train_models.py:215-225", "setting": ALPHA})
    beta: float | None = field(default=None, metadata={
        "help": "weight of reverse CE; default per data set (CIFAR-10 1.0, CIFAR-100 0.1)",
        "source": "train_models.py:215-225", "setting": BETA})

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"{name} {value} must be a finite number >= 0")


@METHODS.register("sce")
class SCE(Method):
    """SCE (ICCV 2019): alpha CE + beta reverse CE, the reverse term with log 0 = ln(1e-4)."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019"
    code = "github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels"
    Options = SCEOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """alpha and beta over the published values (0.01, 0.1, 6.0 and 0.1, 1.0; train_models.py:207-225)."""
        return {"alpha": Param("float", 0.01, 10.0, log=True, grid=(0.01, 0.1, 1.0, 6.0), source="train_models.py"),
                "beta": Param("float", 0.1, 10.0, log=True, grid=(0.1, 1.0, 5.0), source="train_models.py")}

    def setup(self) -> None:
        self.alpha, self.beta = self.opts.alpha, self.opts.beta  # per-setting defaults filled in by Method.__init__
        self.add_network("net", schedule_epochs=self.ctx.epochs)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        loss, terms = sce_loss(logits.float(), batch["label"], self.alpha, self.beta)
        return StepOutput(loss=loss, logits=logits, terms=terms)

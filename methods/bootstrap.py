"""Bootstrapping, soft and hard (Reed et al., "Training Deep Neural Networks on Noisy Labels with
Bootstrapping", ICLR workshop 2015). No official code; the Keras reference implementations the
SCE and loss-correction papers compare against (SCE ``loss.py:51-73``, soft and hard; LC
``loss.py:56-62``, soft).

One network trained with cross-entropy against a target that mixes the given one-hot label t
with the network's own prediction q = p / sum(p), clipped to [1e-7, 1 - 1e-7] (``K.epsilon()``):

    soft:  L = -sum_k (beta t_k + (1 - beta) q_k) log q_k                 beta = 0.95
    hard:  L = -sum_k (beta t_k + (1 - beta) onehot(argmax q)_k) log q_k  beta = 0.8

In the Keras soft loss the (1 - beta) q part of the target is not detached, so its gradient
carries an entropy-minimisation term (the paper's "minimum entropy" reading); that is the
default here, and ``detach=true`` gives the detached target many later re-implementations use
(PaulAlbert31/LabelNoiseCorrection ``utils.py:268``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from bench.common.defaults import FromOptions, PerSetting, case
from bench.common.search import Param, Setting
from methods.base import METHODS, Method, Phase, StepOutput
from methods.shared import keras_probs

EPS = 1e-7  # K.epsilon()
BETA = {"soft": 0.95, "hard": 0.8}  # SCE loss.py:55 (soft), loss.py:67 (hard)


def bootstrap_loss(logits: torch.Tensor, y: torch.Tensor, beta: float, variant: str,
                   detach: bool = False) -> torch.Tensor:
    """The batch mean of the bootstrapped cross-entropy (soft or hard) on one-hot labels."""
    q = keras_probs(logits, EPS)
    t = F.one_hot(y, logits.shape[1]).to(q.dtype)
    if variant == "soft":
        own = q.detach() if detach else q
    else:  # the argmax is piecewise constant: no gradient either way
        own = F.one_hot(q.argmax(dim=1), logits.shape[1]).to(q.dtype)
    target = beta * t + (1 - beta) * own
    return -(target * q.log()).sum(dim=1).mean()


@dataclass
class BootstrapOptions:
    variant: Literal["soft", "hard"] = field(default="soft", metadata={
        "help": "soft: mix in the prediction; hard: mix in its argmax", "source": "SCE loss.py:51-73"})
    beta: float | None = field(default=None, metadata={
        "help": "weight of the given label in the target; default 0.95 (soft), 0.8 (hard)",
        "source": "SCE loss.py:55, 67 (Reed et al. 2015)",
        "setting": PerSetting(case(FromOptions(lambda s, o: BETA[o.variant], "0.95 (soft), 0.8 (hard), by variant"),
                                   "SCE loss.py:55 (soft), 67 (hard)"))})
    detach: bool = field(default=False, metadata={
        "help": "stop the gradient through the soft target's prediction (the Keras code does not)",
        "source": "SCE loss.py:51-73 (Keras: no stop-gradient); M-Correction utils.py:268 detaches"})

    def __post_init__(self) -> None:
        if self.beta is not None and not 0 <= self.beta <= 1:
            raise ValueError(f"beta {self.beta} must lie in [0, 1]")


@METHODS.register("bootstrap")
class Bootstrap(Method):
    """Bootstrapping (ICLR-W 2015): CE against beta * label + (1 - beta) * own (soft or hard) prediction."""

    family = "losses"  # `bench report` and `bench plot` group methods by it

    paper = "Reed et al., Training Deep Neural Networks on Noisy Labels with Bootstrapping, ICLR workshop 2015"
    code = "none official; Keras reference github.com/YisenWang/symmetric_cross_entropy_for_noisy_labels"
    Options = BootstrapOptions

    @classmethod
    def search_space(cls, setting: Setting) -> dict[str, Param]:
        """beta around the published 0.8 (hard) and 0.95 (soft); the ends are our choice."""
        return {"beta": Param("float", 0.5, 1.0, grid=(0.6, 0.8, 0.95), source="SCE loss.py:55, 67")}

    def setup(self) -> None:
        self.beta = self.opts.beta  # by variant unless given (Method.__init__)
        self.add_network("net", schedule_epochs=self.ctx.epochs)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, phase: Phase) -> StepOutput:
        logits = self.models["net"](batch["train"])
        loss = bootstrap_loss(logits.float(), batch["label"], self.beta, self.opts.variant, self.opts.detach)
        return StepOutput(loss=loss, logits=logits)
